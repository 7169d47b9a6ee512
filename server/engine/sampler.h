// Token sampling from one row of float32 logits: the request's logit adjustments first
// (logit_adjustments.h), then greedy (temperature 0), or temperature with optional min-p, top-k and
// top-p, drawing from the request's own generator, so a seeded request samples the same tokens
// whatever else shares its batch. Pure functions, thread-safe.
#pragma once

#include <cstdint>
#include <random>

#include "server/engine/logit_adjustments.h"
#include "server/engine/request.h"

namespace deltaserve::engine {

struct SampledToken {
  int32_t token_id = 0;
  // log p(token) under softmax(logits) (temperature 1); filled when logprobs are requested.
  float logprob = 0;
};

// SampleToken draws the next token from `logits` (the model's row, left unchanged) for a request
// whose tokens so far are `history` (what the penalties look at). min_p keeps the tokens whose
// probability at the request's temperature is at least min_p times the most likely one's, before
// top-k and top-p. The reported logprob is under the model's own distribution (unadjusted,
// temperature 1).
SampledToken SampleToken(const float* logits, int64_t vocab_size, const SamplingOptions& options,
                         const TokenHistory& history, std::mt19937_64& generator);

// LogProbability returns log softmax(logits)[token].
float LogProbability(const float* logits, int64_t vocab_size, int32_t token);

}  // namespace deltaserve::engine
