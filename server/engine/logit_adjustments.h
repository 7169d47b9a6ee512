// The logit adjustments a request asks for before each of its tokens is drawn: repetition,
// presence and frequency penalties, logit bias, banned and allowed tokens (SamplingOptions).
// They apply to a copy of the request's own row of the step's logits, so the other requests of a
// mixed batch are untouched, and to greedy decoding too. In this order:
//  - repetition_penalty r (the Hugging Face / vLLM definition): each distinct token that occurs in
//    the prompt or the generated tokens has its logit divided by r when positive, multiplied by r
//    otherwise;
//  - frequency_penalty f and presence_penalty p (OpenAI's definitions, over generated tokens only):
//    logit -= count * f + (count > 0 ? p : 0), count = the token's occurrences;
//  - logit_bias: added;
//  - banned tokens, the last token of each bad word whose other tokens end the generated ones,
//    and with an allowed list every token outside it, become -infinity (last, so that no bias
//    revives them).
// Pure functions.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "server/engine/request.h"

namespace deltaserve::engine {

// The tokens a request's penalties look at: the prompt followed by the generated tokens.
struct TokenHistory {
  const int32_t* tokens = nullptr;
  int64_t count = 0;
  int64_t prompt_tokens = 0;
};

// Bounds on bad words: how many per request, and tokens in each.
constexpr int64_t kMaxBadWords = 256;
constexpr int64_t kMaxBadWordTokens = 32;

// CheckLogitAdjustments: INVALID_ARGUMENT, saying what to fix, unless repetition_penalty is in
// (0, 100], the presence and frequency penalties in [-2, 2], min_p in [0, 1], every bias in
// [-100, 100], every token id below vocab_size, the bad words within the bounds above, and some
// allowed token (if any are listed) not banned.
absl::Status CheckLogitAdjustments(const SamplingOptions& options, int64_t vocab_size);

// AdjustsLogits: whether any of the options above is set (otherwise the row is used as it is).
bool AdjustsLogits(const SamplingOptions& options);

// AdjustLogits applies them in place to one row of `vocab_size` logits. Token ids in the options
// and the history are below vocab_size (Engine::Validate checks the options).
void AdjustLogits(const SamplingOptions& options, const TokenHistory& history, float* logits, int64_t vocab_size);

}  // namespace deltaserve::engine
