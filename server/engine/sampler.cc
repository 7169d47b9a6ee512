#include "server/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace deltaserve::engine {

float LogProbability(const float* logits, int64_t vocab_size, int32_t token) {
  float max_logit = *std::max_element(logits, logits + vocab_size);
  double sum = 0;
  for (int64_t i = 0; i < vocab_size; ++i) sum += std::exp(static_cast<double>(logits[i] - max_logit));
  return static_cast<float>(logits[token] - max_logit - std::log(sum));
}

SampledToken SampleToken(const float* model_logits, int64_t vocab_size, const SamplingOptions& options,
                         const TokenHistory& history, std::mt19937_64& generator) {
  std::vector<float> adjusted;
  const float* logits = model_logits;
  if (AdjustsLogits(options)) {
    adjusted.assign(model_logits, model_logits + vocab_size);
    AdjustLogits(options, history, adjusted.data(), vocab_size);
    logits = adjusted.data();
  }
  SampledToken result;
  if (options.temperature <= 0.0f) {
    result.token_id = static_cast<int32_t>(std::max_element(logits, logits + vocab_size) - logits);
  } else {
    const float highest = *std::max_element(logits, logits + vocab_size);
    // Candidates: every token that can be drawn (banned ones are -infinity), above min_p's floor.
    const float floor = options.min_p > 0.0f ? highest + options.temperature * std::log(options.min_p)
                                             : -std::numeric_limits<float>::infinity();
    std::vector<int32_t> candidates;
    candidates.reserve(vocab_size);
    for (int64_t id = 0; id < vocab_size; ++id) {
      if (logits[id] >= floor && logits[id] > -std::numeric_limits<float>::infinity()) {
        candidates.push_back(static_cast<int32_t>(id));
      }
    }
    auto by_logit = [logits](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    const int64_t available = static_cast<int64_t>(candidates.size());
    if (options.top_k > 0 && options.top_k < available) {
      std::partial_sort(candidates.begin(), candidates.begin() + options.top_k, candidates.end(), by_logit);
      candidates.resize(options.top_k);
    } else if (options.top_p > 0.0f && options.top_p < 1.0f) {
      std::sort(candidates.begin(), candidates.end(), by_logit);
    }
    const double inverse_temperature = 1.0 / options.temperature;
    std::vector<double> weights(candidates.size());
    double total = 0;
    for (size_t i = 0; i < candidates.size(); ++i) {
      weights[i] = std::exp((logits[candidates[i]] - highest) * inverse_temperature);
      total += weights[i];
    }
    size_t count = candidates.size();
    if (options.top_p > 0.0f && options.top_p < 1.0f) {
      // candidates are sorted by logit here (fully, or the kept top_k by partial_sort): keep
      // the smallest prefix whose mass reaches top_p.
      double cumulative = 0;
      size_t i = 0;
      for (; i < count; ++i) {
        cumulative += weights[i] / total;
        if (cumulative >= options.top_p) break;
      }
      count = std::min(count, i + 1);
      total = 0;
      for (size_t j = 0; j < count; ++j) total += weights[j];
    }
    std::uniform_real_distribution<double> uniform(0.0, total);
    double draw = uniform(generator);
    // Rounding can leave the draw just short of the end: then the last candidate with weight.
    size_t chosen = count - 1;
    while (chosen > 0 && weights[chosen] == 0) --chosen;
    for (size_t i = 0; i < count; ++i) {
      draw -= weights[i];
      if (draw < 0) {
        chosen = i;
        break;
      }
    }
    result.token_id = candidates[chosen];
  }
  if (options.logprobs) result.logprob = LogProbability(model_logits, vocab_size, result.token_id);
  return result;
}

}  // namespace deltaserve::engine
