// The engine's request vocabulary: what callers submit (EngineRequest), what they receive
// (GenerationOutput pieces and one RequestResult) and the RequestSink they receive it through.
// Plain C++ structs: no gRPC or protobuf types (front ends convert).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace deltaserve::engine {

enum class RequestKind { kGenerate, kScore };

struct SamplingOptions {
  // 0 = the engine's default_max_tokens.
  int32_t max_tokens = 0;
  // 0 = greedy.
  float temperature = 0.0f;
  // 0 = off.
  int32_t top_k = 0;
  // 0 or 1 = off.
  float top_p = 1.0f;
  // Same seed, same output, whatever else is in the batch. Unset: a fresh random seed.
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  // Report log p(token) under the unmodified model distribution for each generated token.
  bool logprobs = false;
  // Parallel sampling: n sequences from one prompt, computed once. Choice i samples with its own
  // generator seeded seed + i (so choice i equals a single request with that seed).
  int32_t n = 1;
  // Logit adjustments before sampling (logit_adjustments.h), greedy included. 1 = off; > 0.
  float repetition_penalty = 1.0f;
  // OpenAI's, over the generated tokens; 0 = off; in [-2, 2].
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Tokens whose probability is below min_p times the most likely token's are not drawn; 0 = off.
  float min_p = 0.0f;
  // Token id -> bias in [-100, 100] added to its logit.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Tokens never drawn; and, when not empty, the only tokens that may be drawn.
  std::vector<int32_t> banned_token_ids;
  std::vector<int32_t> allowed_token_ids;
  // Token sequences never generated: the last token of each is not drawn where the generated
  // tokens end with the ones before it (a one-token word: never).
  std::vector<std::vector<int32_t>> bad_words;
};

struct EngineRequest {
  RequestKind kind = RequestKind::kGenerate;
  std::string request_id;
  // The variant's adapter in the engine's AdapterCache; 0 for the base model. The request
  // waits in the queue until the adapter is on the device.
  uint64_t adapter_id = 0;
  // The variant's name and version, for reporting which adapters are running or waiting and
  // which version served; empty and 0 for the base.
  std::string variant_name;
  int64_t variant_version = 0;
  // Who asked, for fair scheduling between tenants ("" = one shared tenant), and the tenant's
  // share weight (its virtual token counter grows by tokens / weight).
  std::string tenant;
  double tenant_weight = 1.0;
  // The tenant's max_queued_requests quota: Submit refuses the request (RESOURCE_EXHAUSTED)
  // while that many of the tenant's requests wait for the running batch. 0 = no limit.
  int64_t tenant_max_queued = 0;
  std::vector<int32_t> prompt_token_ids;
  SamplingOptions sampling;
  absl::Time deadline = absl::InfiniteFuture();
};

enum class FinishReason { kStop, kLength, kCancelled, kDeadlineExceeded, kError };
const char* FinishReasonName(FinishReason reason);

struct GenerationOutput {
  std::string text;  // always valid UTF-8
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;  // parallel to token_ids when requested
  // With n > 1: which choice this is, and on a choice's last output, why it ended (the request's
  // OnFinished comes once, after every choice ended).
  int32_t index = 0;
  std::optional<FinishReason> choice_finished;
};

struct Usage {
  int64_t prompt_tokens = 0;
  // Prompt tokens whose KV came from the prefix cache (at the request's last admission).
  int64_t cached_prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double time_to_first_token_seconds = 0;
  double queue_time_seconds = 0;
};

struct RequestResult {
  FinishReason reason = FinishReason::kStop;
  absl::Status status;  // non-OK only for kError (and shutdown)
  // The last piece of output (may be empty).
  GenerationOutput final_output;
  Usage usage;
  // Score requests: the scored ids and log p(token_i | tokens_<i) for i >= 1.
  std::vector<int32_t> scored_token_ids;
  std::vector<float> token_logprobs;
};

// RequestSink receives a request's output, on the engine thread: implementations must return
// quickly and never block (queue the data and hand it to another thread). OnFinished is called
// exactly once, last; the engine drops its reference afterwards.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  virtual void OnOutput(GenerationOutput output) = 0;
  virtual void OnFinished(RequestResult result) = 0;
};

}  // namespace deltaserve::engine
