// Sampling: greedy, top-k, top-p, min-p, temperature and the logit adjustments (penalties, bias,
// banned and allowed tokens) against the exact distributions they define, computed here
// independently and measured over 20,000 seeded draws; seeds reproduce.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "server/engine/sampler.h"

namespace deltaserve::engine {
namespace {

const std::vector<float> kLogits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};

std::vector<double> Frequencies(const SamplingOptions& options, int draws = 20000) {
  std::mt19937_64 generator(7);
  std::vector<double> counts(kLogits.size(), 0);
  for (int i = 0; i < draws; ++i) counts[SampleToken(kLogits.data(), 3, options, {}, generator).token_id] += 1;
  for (double& count : counts) count /= draws;
  return counts;
}

TEST(SamplerTest, GreedyPicksTheArgmax) {
  std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.9f};
  std::mt19937_64 generator(1);
  SamplingOptions options;
  options.logprobs = true;
  SampledToken token = SampleToken(logits.data(), 4, options, {}, generator);
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
    first.push_back(SampleToken(logits.data(), 1000, options, {}, a).token_id);
    second.push_back(SampleToken(logits.data(), 1000, options, {}, b).token_id);
    third.push_back(SampleToken(logits.data(), 1000, options, {}, c).token_id);
  }
  EXPECT_EQ(first, second);
  EXPECT_NE(first, third);
}

// Draw frequencies over any logits and history.
std::vector<double> FrequenciesOf(const std::vector<float>& logits, const SamplingOptions& options,
                                  const std::vector<int32_t>& tokens = {}, int64_t prompt_tokens = 0,
                                  int draws = 20000) {
  std::mt19937_64 generator(11);
  std::vector<double> counts(logits.size(), 0);
  const TokenHistory history{tokens.data(), static_cast<int64_t>(tokens.size()), prompt_tokens};
  for (int i = 0; i < draws; ++i) {
    counts[SampleToken(logits.data(), static_cast<int64_t>(logits.size()), options, history, generator).token_id] += 1;
  }
  for (double& count : counts) count /= draws;
  return counts;
}

// softmax(logits / temperature) in double.
std::vector<double> Softmax(const std::vector<double>& logits, double temperature = 1.0) {
  double highest = logits[0];
  for (double logit : logits) highest = std::max(highest, logit);
  std::vector<double> p;
  double total = 0;
  for (double logit : logits) total += std::exp((logit - highest) / temperature);
  for (double logit : logits) p.push_back(std::exp((logit - highest) / temperature) / total);
  return p;
}

TEST(SamplerTest, PenaltiesAndBiasFollowTheirDefinitions) {
  const std::vector<float> logits = {1.0f, 0.5f, -0.5f, 0.2f, 0.0f};
  // Prompt [0, 4], then generated 1, 1, 2.
  const std::vector<int32_t> tokens = {0, 4, 1, 1, 2};
  SamplingOptions options;
  options.temperature = 1.0f;
  options.repetition_penalty = 1.5f;
  options.frequency_penalty = 0.3f;
  options.presence_penalty = 0.4f;
  options.logit_bias = {{3, 0.7f}, {0, -0.2f}};
  // Written out: repetition over tokens 0, 4 (prompt) and 1, 2 (output): positive / 1.5, negative
  // * 1.5; then output counts 1: 2, 2: 1 cost count * 0.3 + 0.4; then the biases.
  const std::vector<double> expected = Softmax({1.0 / 1.5 - 0.2, 0.5 / 1.5 - 2 * 0.3 - 0.4, -0.5 * 1.5 - 0.3 - 0.4,
                                                0.2 + 0.7, 0.0 * 1.5});
  const std::vector<double> frequencies = FrequenciesOf(logits, options, tokens, 2);
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(frequencies[i], expected[i], 0.012) << "token " << i;
  // Without a history the penalties do nothing: only the biases act.
  const std::vector<double> biased = Softmax({1.0 - 0.2, 0.5, -0.5, 0.2 + 0.7, 0.0});
  const std::vector<double> alone = FrequenciesOf(logits, options);
  for (size_t i = 0; i < biased.size(); ++i) EXPECT_NEAR(alone[i], biased[i], 0.012) << "token " << i;
}

TEST(SamplerTest, MinPDropsTokensBelowItsShareOfTheMostLikely) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingOptions options;
  options.temperature = 1.0f;
  options.min_p = 0.35f;  // keeps p >= 0.175: tokens 0 and 1
  std::vector<double> frequencies = FrequenciesOf(logits, options);
  EXPECT_NEAR(frequencies[0], 0.625, 0.012);
  EXPECT_NEAR(frequencies[1], 0.375, 0.012);
  EXPECT_EQ(frequencies[2] + frequencies[3], 0.0);
  // At temperature 0.5 the probabilities are proportional to p^2 (0.25, 0.09, 0.0225, 0.0025):
  // min_p 0.08 keeps the first three.
  options.temperature = 0.5f;
  options.min_p = 0.08f;
  frequencies = FrequenciesOf(logits, options);
  EXPECT_NEAR(frequencies[0], 0.25 / 0.3625, 0.012);
  EXPECT_NEAR(frequencies[2], 0.0225 / 0.3625, 0.012);
  EXPECT_EQ(frequencies[3], 0.0);
}

TEST(SamplerTest, BannedAndAllowedTokensAreNeverDrawnAndLogprobsStayTheModels) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f};
  std::vector<double> raw(logits.begin(), logits.end());
  SamplingOptions options;
  options.logprobs = true;
  options.banned_token_ids = {0};
  std::mt19937_64 generator(3);
  SampledToken greedy = SampleToken(logits.data(), 5, options, {}, generator);
  EXPECT_EQ(greedy.token_id, 1);  // the argmax is banned
  EXPECT_NEAR(greedy.logprob, std::log(Softmax(raw)[1]), 1e-5);  // under the unadjusted model
  options.logit_bias = {{4, 10.0f}};
  EXPECT_EQ(SampleToken(logits.data(), 5, options, {}, generator).token_id, 4);
  options.logit_bias = {{0, 100.0f}};  // a bias cannot revive a banned token
  EXPECT_EQ(SampleToken(logits.data(), 5, options, {}, generator).token_id, 1);
  options.logit_bias.clear();
  options.temperature = 1.0f;
  options.allowed_token_ids = {0, 2, 3};  // 0 is also banned: 2 and 3 remain
  const std::vector<double> frequencies = FrequenciesOf(logits, options);
  const std::vector<double> expected = Softmax({0.5, 0.0});
  EXPECT_EQ(frequencies[0] + frequencies[1] + frequencies[4], 0.0);
  EXPECT_NEAR(frequencies[2], expected[0], 0.012);
  EXPECT_NEAR(frequencies[3], expected[1], 0.012);
}

TEST(SamplerTest, BadWordsBanTheirLastTokenAfterTheirOthers) {
  SamplingOptions options;
  options.bad_words = {{3}, {1, 2}, {4, 1, 0}};
  const std::vector<float> logits = {0.0f, 0.1f, 0.2f, 0.3f, 0.4f};
  auto adjusted = [&](const std::vector<int32_t>& tokens, int64_t prompt_tokens) {
    std::vector<float> row = logits;
    AdjustLogits(options, {tokens.data(), static_cast<int64_t>(tokens.size()), prompt_tokens}, row.data(), 5);
    return row;
  };
  const float never = -std::numeric_limits<float>::infinity();
  // Nothing generated yet: only the one-token word applies (the prompt's last token 1 does not count).
  EXPECT_EQ(adjusted({0, 1}, 2), (std::vector<float>{0.0f, 0.1f, 0.2f, never, 0.4f}));
  // Generated ... 1: token 2 is banned.
  EXPECT_EQ(adjusted({0, 1, 1}, 2), (std::vector<float>{0.0f, 0.1f, never, never, 0.4f}));
  // Generated 4, 1: token 0 (third word) and 2 (second word) are banned.
  EXPECT_EQ(adjusted({0, 4, 1}, 1), (std::vector<float>{never, 0.1f, never, never, 0.4f}));
  // The 4 of "4, 1" is in the prompt: the third word does not apply.
  EXPECT_EQ(adjusted({4, 1}, 1), (std::vector<float>{0.0f, 0.1f, never, never, 0.4f}));
}

TEST(SamplerTest, LogitAdjustmentsOutsideTheirRangesAreRefused) {
  auto refused = [](auto change) {
    SamplingOptions options;
    change(options);
    return CheckLogitAdjustments(options, 10).code() == absl::StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(CheckLogitAdjustments(SamplingOptions(), 10).ok());
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.repetition_penalty = 0.0f; }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.repetition_penalty = std::nanf(""); }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.presence_penalty = 2.5f; }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.frequency_penalty = -2.1f; }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.min_p = 1.5f; }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.logit_bias = {{10, 1.0f}}; }));  // outside the vocabulary
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.logit_bias = {{3, 101.0f}}; }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.banned_token_ids = {-1}; }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.allowed_token_ids = {12}; }));
  EXPECT_TRUE(refused([](SamplingOptions& o) {
    o.allowed_token_ids = {1, 2};
    o.banned_token_ids = {2, 1};
  }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.bad_words = {{}}; }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.bad_words = {{1, 11}}; }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.bad_words.assign(kMaxBadWords + 1, {1}); }));
  EXPECT_TRUE(refused([](SamplingOptions& o) { o.bad_words = {std::vector<int32_t>(kMaxBadWordTokens + 1, 1)}; }));
}

}  // namespace
}  // namespace deltaserve::engine
