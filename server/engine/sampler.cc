#include "server/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace deltaserve::engine {

float LogProbability(const float* logits, int64_t vocab_size, int32_t token) {
  float max_logit = *std::max_element(logits, logits + vocab_size);
  double sum = 0;
  for (int64_t i = 0; i < vocab_size; ++i) sum += std::exp(static_cast<double>(logits[i] - max_logit));
  return static_cast<float>(logits[token] - max_logit - std::log(sum));
}

SampledToken SampleToken(const float* logits, int64_t vocab_size, const SamplingOptions& options,
                         std::mt19937_64& generator) {
  SampledToken result;
  if (options.temperature <= 0.0f) {
    result.token_id = static_cast<int32_t>(std::max_element(logits, logits + vocab_size) - logits);
  } else {
    std::vector<int32_t> candidates(vocab_size);
    std::iota(candidates.begin(), candidates.end(), 0);
    auto by_logit = [logits](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    int64_t keep = vocab_size;
    if (options.top_k > 0 && options.top_k < vocab_size) {
      keep = options.top_k;
      std::partial_sort(candidates.begin(), candidates.begin() + keep, candidates.end(), by_logit);
      candidates.resize(keep);
    } else if (options.top_p > 0.0f && options.top_p < 1.0f) {
      std::sort(candidates.begin(), candidates.end(), by_logit);
    }
    const double inverse_temperature = 1.0 / options.temperature;
    float max_logit = logits[candidates[0]];
    for (int32_t id : candidates) max_logit = std::max(max_logit, logits[id]);
    std::vector<double> weights(candidates.size());
    double total = 0;
    for (size_t i = 0; i < candidates.size(); ++i) {
      weights[i] = std::exp((logits[candidates[i]] - max_logit) * inverse_temperature);
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
    size_t chosen = count - 1;
    for (size_t i = 0; i < count; ++i) {
      draw -= weights[i];
      if (draw < 0) {
        chosen = i;
        break;
      }
    }
    result.token_id = candidates[chosen];
  }
  if (options.logprobs) result.logprob = LogProbability(logits, vocab_size, result.token_id);
  return result;
}

}  // namespace deltaserve::engine
