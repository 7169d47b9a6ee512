// Edit-evaluation measures against values worked out by hand.
#include <gtest/gtest.h>

#include <cmath>

#include "server/ops/eval/edit_metrics.h"

namespace deltaserve::ops::eval {
namespace {

TEST(EditMetricsTest, TeacherForcedHitsAndLikelihoods) {
  // Three positions over a vocabulary of four.
  const at::Tensor log_probs = at::log(at::tensor({0.1, 0.6, 0.2, 0.1,   //
                                                   0.7, 0.1, 0.1, 0.1,   //
                                                   0.25, 0.25, 0.4, 0.1},
                                                  at::kDouble)
                                           .reshape({3, 4}));
  EXPECT_TRUE(TargetIsArgmax(log_probs, {1, 0, 2}));
  EXPECT_FALSE(TargetIsArgmax(log_probs, {1, 0, 3}));
  EXPECT_FALSE(TargetIsArgmax(log_probs, {1, 0})) << "lengths must agree";
  EXPECT_NEAR(SequenceLogProb(log_probs, {1, 0, 2}), std::log(0.6 * 0.7 * 0.4), 1e-12);
  EXPECT_TRUE(TargetMoreLikely(std::log(0.3), std::log(0.2)));
}

TEST(EditMetricsTest, LocalityCountsUnchangedContinuations) {
  EXPECT_DOUBLE_EQ(UnchangedFraction({{1, 2}, {3}, {4, 5}, {6}}, {{1, 2}, {9}, {4, 5}, {6}}), 0.75);
  EXPECT_DOUBLE_EQ(UnchangedFraction({}, {}), 1.0);
}

TEST(EditMetricsTest, NGramEntropyAndFluency) {
  // "1 2 1 2 1": bigrams 12, 21, 12, 21 -> two equally likely: 1 bit; trigrams 121, 212, 121:
  // p = 2/3, 1/3.
  const std::vector<int64_t> tokens = {1, 2, 1, 2, 1};
  const double h3 = -(2.0 / 3) * std::log2(2.0 / 3) - (1.0 / 3) * std::log2(1.0 / 3);
  EXPECT_NEAR(NGramEntropy(tokens, 2), 1.0, 1e-12);
  EXPECT_NEAR(NGramEntropy(tokens, 3), h3, 1e-12);
  EXPECT_NEAR(Fluency(tokens), (2.0 / 3 * 1.0 + 4.0 / 3 * h3) / 2, 1e-12);
  EXPECT_DOUBLE_EQ(NGramEntropy({7, 7, 7, 7}, 2), 0.0) << "pure repetition";
  EXPECT_LT(Fluency({7, 7, 7, 7, 7, 7}), Fluency({1, 2, 3, 4, 5, 6}));
  EXPECT_DOUBLE_EQ(NGramEntropy({1}, 2), 0.0);
}

}  // namespace
}  // namespace deltaserve::ops::eval
