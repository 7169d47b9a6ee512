// OpenAI request bodies (POST /v1/completions and /v1/chat/completions) parsed into what the
// engine runs. Pure functions; INVALID_ARGUMENT names the field and what to send instead.
//   - model: the variant ("" or absent, or the base model's name = the base model).
//   - Sampling: max_tokens (chat also max_completion_tokens), temperature (default 1, as
//     OpenAI's), top_p, seed, stop (a string or up to 16), and vLLM's top_k, ignore_eos,
//     stop_token_ids.
//   - stream, stream_options.include_usage.
//   - logprobs: the sampled token's log-probability (completions: logprobs 0; chat: logprobs
//     true). Top alternatives (logprobs > 0, top_logprobs > 0) are refused, as are n > 1,
//     best_of > 1, echo, suffix, non-zero penalties and logit_bias: the engine does not do them.
//   - Completions take one prompt: a string or token ids (or a list holding one of those).
//   - Chat takes messages {role, content}; content is a string or a list of text parts.
//     vLLM's add_generation_prompt (default true) is honoured.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/request.h"
#include "server/model/chat_template.h"

namespace deltaserve::api {

struct OpenAiRequest {
  bool chat = false;
  std::string model;
  std::string prompt;               // completions, text
  std::vector<int32_t> prompt_ids;  // completions, token ids
  std::vector<model::ChatMessage> messages;  // chat
  bool add_generation_prompt = true;
  engine::SamplingOptions sampling;
  std::vector<std::string> bad_words;  // vLLM's extension: texts never generated
  bool stream = false;
  bool include_usage = false;
};

absl::StatusOr<OpenAiRequest> ParseCompletionRequest(std::string_view body);
absl::StatusOr<OpenAiRequest> ParseChatRequest(std::string_view body);

}  // namespace deltaserve::api
