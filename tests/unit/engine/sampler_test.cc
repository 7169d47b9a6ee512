// Sampling: greedy, top-k, top-p and temperature against the exact distributions they define,
// measured over many seeded draws; seeds reproduce.
#include <cmath>

#include <gtest/gtest.h>

#include "server/engine/sampler.h"

namespace deltaserve::engine {
namespace {

const std::vector<float> kLogits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};

std::vector<double> Frequencies(const SamplingOptions& options, int draws = 20000) {
  std::mt19937_64 generator(7);
  std::vector<double> counts(kLogits.size(), 0);
  for (int i = 0; i < draws; ++i) counts[SampleToken(kLogits.data(), 3, options, generator).token_id] += 1;
  for (double& count : counts) count /= draws;
  return counts;
}

TEST(SamplerTest, GreedyPicksTheArgmax) {
  std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.9f};
  std::mt19937_64 generator(1);
  SamplingOptions options;
  options.logprobs = true;
  SampledToken token = SampleToken(logits.data(), 4, options, generator);
  EXPECT_EQ(token.token_id, 1);
  double norm = 0;
  for (float logit : logits) norm += std::exp(logit);
  EXPECT_NEAR(token.logprob, 2.0 - std::log(norm), 1e-5);
}

TEST(SamplerTest, TemperatureOneFollowsTheSoftmax) {
  SamplingOptions options;
  options.temperature = 1.0f;
  std::vector<double> frequencies = Frequencies(options);
  EXPECT_NEAR(frequencies[0], 0.5, 0.015);
  EXPECT_NEAR(frequencies[1], 0.3, 0.015);
  EXPECT_NEAR(frequencies[2], 0.2, 0.015);
}

TEST(SamplerTest, LowTemperatureSharpens) {
  SamplingOptions options;
  options.temperature = 0.5f;  // probabilities proportional to p^2: 25, 9, 4 of 38
  std::vector<double> frequencies = Frequencies(options);
  EXPECT_NEAR(frequencies[0], 25.0 / 38, 0.015);
  EXPECT_NEAR(frequencies[2], 4.0 / 38, 0.015);
}

TEST(SamplerTest, TopKRenormalisesTheKept) {
  SamplingOptions options;
  options.temperature = 1.0f;
  options.top_k = 2;
  std::vector<double> frequencies = Frequencies(options);
  EXPECT_NEAR(frequencies[0], 0.625, 0.015);
  EXPECT_NEAR(frequencies[1], 0.375, 0.015);
  EXPECT_EQ(frequencies[2], 0.0);
}

TEST(SamplerTest, TopPKeepsTheSmallestSufficientSet) {
  SamplingOptions options;
  options.temperature = 1.0f;
  options.top_p = 0.75f;  // 0.5 < 0.75 <= 0.8: keeps the first two
  std::vector<double> frequencies = Frequencies(options);
  EXPECT_NEAR(frequencies[0], 0.625, 0.015);
  EXPECT_EQ(frequencies[2], 0.0);
  options.top_p = 0.4f;  // only the first
  EXPECT_EQ(Frequencies(options, 2000)[0], 1.0);
}

TEST(SamplerTest, SameSeedSameDraws) {
  std::vector<float> logits(1000);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  SamplingOptions options;
  options.temperature = 0.8f;
  options.top_p = 0.9f;
  std::mt19937_64 a(42), b(42), c(43);
  std::vector<int32_t> first, second, third;
  for (int i = 0; i < 50; ++i) {
    first.push_back(SampleToken(logits.data(), 1000, options, a).token_id);
    second.push_back(SampleToken(logits.data(), 1000, options, b).token_id);
    third.push_back(SampleToken(logits.data(), 1000, options, c).token_id);
  }
  EXPECT_EQ(first, second);
  EXPECT_NE(first, third);
}

}  // namespace
}  // namespace deltaserve::engine
