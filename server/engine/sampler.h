// Token sampling from one row of float32 logits: greedy (temperature 0), or temperature with
// optional top-k and top-p, drawing from the request's own generator, so a seeded request
// samples the same tokens whatever else shares its batch. Pure functions, thread-safe.
#pragma once

#include <cstdint>
#include <random>

#include "server/engine/request.h"

namespace deltaserve::engine {

struct SampledToken {
  int32_t token_id = 0;
  // log p(token) under softmax(logits) (temperature 1); filled when logprobs are requested.
  float logprob = 0;
};

SampledToken SampleToken(const float* logits, int64_t vocab_size, const SamplingOptions& options,
                         std::mt19937_64& generator);

// LogProbability returns log softmax(logits)[token].
float LogProbability(const float* logits, int64_t vocab_size, int32_t token);

}  // namespace deltaserve::engine
