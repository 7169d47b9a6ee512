// Dense merge methods on hand-made task vectors whose results are worked out in the comments.
#include "server/ops/merge/dense_merge.h"

#include <gtest/gtest.h>

namespace deltaserve::ops::merge {
namespace {

at::Tensor Values(std::vector<float> values) { return at::tensor(values, at::kFloat); }

std::vector<float> ToVector(const at::Tensor& tensor) {
  at::Tensor flat = tensor.reshape({-1}).contiguous();
  return std::vector<float>(flat.data_ptr<float>(), flat.data_ptr<float>() + flat.numel());
}

at::Tensor Merge(const std::vector<at::Tensor>& taus, const std::vector<double>& weights,
                 DenseMergeOptions options, uint64_t seed = 0) {
  auto merged = MergeTensors(taus, weights, options, seed);
  EXPECT_TRUE(merged.ok()) << merged.status();
  return merged.value_or(at::Tensor());
}

TEST(DenseMergeTest, TaskArithmeticIsTheScaledWeightedSum) {
  DenseMergeOptions options;
  options.lambda = 2.0;
  at::Tensor merged = Merge({Values({1, 2}), Values({3, -4})}, {0.5, 0.25}, options);
  // 2 * (0.5*[1,2] + 0.25*[3,-4]) = 2 * [1.25, 0] = [2.5, 0]
  EXPECT_EQ(ToVector(merged), (std::vector<float>{2.5f, 0.0f}));
}

TEST(DenseMergeTest, TiesElectsSignsAndTakesTheDisjointMean) {
  DenseMergeOptions options;
  options.method = "ties";
  const std::vector<at::Tensor> taus = {Values({1, -2, 3, 0.5}), Values({-1, -1, 2, -4})};
  // No trimming. Sums [0, -3, 5, -3.5] elect signs [0, -, +, -]. Entry 0: nobody agrees with
  // sign 0, divisor 0 -> 1, result 0. Entry 1: (-2 - 1) / 2. Entry 2: (3 + 2) / 2. Entry 3: only
  // the second agrees: -4 / 1.
  EXPECT_EQ(ToVector(Merge(taus, {1, 1}, options)), (std::vector<float>{0, -1.5f, 2.5f, -4}));
  // density 0.5 keeps the top two of each: [0, -2, 3, 0] and [0, 0, 2, -4]. Signs of
  // [0, -2, 5, -4]: entry 1 has only the first (-2), entry 2 both ((3+2)/2), entry 3 only -4.
  options.density = 0.5;
  EXPECT_EQ(ToVector(Merge(taus, {1, 1}, options)), (std::vector<float>{0, -2, 2.5f, -4}));
  // Weights: 0.75 and 0.25 at entry 2 give (0.75*3 + 0.25*2) / (0.75 + 0.25) = 2.75.
  EXPECT_FLOAT_EQ(ToVector(Merge(taus, {0.75, 0.25}, options))[2], 2.75f);
}

TEST(DenseMergeTest, DareKeepsAboutDensityAndPreservesTheMean) {
  DenseMergeOptions options;
  options.method = "dare_linear";
  options.density = 0.3;
  const at::Tensor ones = at::ones({20000});
  double mean_over_seeds = 0;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    at::Tensor merged = Merge({ones}, {1.0}, options, seed);
    const double kept = (merged != 0).to(at::kFloat).mean().item<double>();
    EXPECT_NEAR(kept, 0.3, 0.02) << seed;
    mean_over_seeds += merged.mean().item<double>() / 20;
  }
  EXPECT_NEAR(mean_over_seeds, 1.0, 0.01);
  // Seeded: the same seed gives the same result, another seed another.
  EXPECT_TRUE(at::equal(Merge({ones}, {1.0}, options, 7), Merge({ones}, {1.0}, options, 7)));
  EXPECT_FALSE(at::equal(Merge({ones}, {1.0}, options, 7), Merge({ones}, {1.0}, options, 8)));
}

TEST(DenseMergeTest, BreadcrumbsDropsTheLargestAndKeepsDensity) {
  DenseMergeOptions options;
  options.method = "breadcrumbs";
  const at::Tensor tau = Values({1, -2, 3, 4, -5, 6, 7, -8, 9, 10});
  // gamma 0.1 drops the largest (10); density 0.5 keeps the next five: 9, -8, 7, 6, -5.
  options.density = 0.5;
  options.gamma = 0.1;
  EXPECT_EQ(ToVector(Merge({tau}, {1}, options)), (std::vector<float>{0, 0, 0, 0, -5, 6, 7, -8, 9, 0}));
  // gamma * N < 1 drops none of the top.
  options.gamma = 0.05;
  EXPECT_EQ(ToVector(Merge({tau}, {1}, options)), (std::vector<float>{0, 0, 0, 0, 0, 6, 7, -8, 9, 10}));
  // A density below one entry still keeps one: never a whole zero tensor.
  options.density = 0.01;
  options.gamma = 0.0;
  EXPECT_EQ((Merge({tau}, {1}, options) != 0).sum().item<int64_t>(), 1);
}

TEST(DenseMergeTest, MagnitudePruneKeepsTheTopFraction) {
  DenseMergeOptions options;
  options.method = "magnitude_prune";
  options.density = 0.4;
  EXPECT_EQ(ToVector(Merge({Values({1, -5, 2, 4, -3})}, {2}, options)), (std::vector<float>{0, -10, 0, 8, 0}));
}

TEST(DenseMergeTest, EqualMagnitudesStillKeepExactlyTheCountEarliestFirst) {
  DenseMergeOptions options;
  options.method = "magnitude_prune";
  options.density = 0.5;
  // Magnitudes tie: 9 twice, 2 six times.
  const at::Tensor tau = Values({2, -2, 9, 2, 1, -2, 2, -9, 2, 0});
  // Five kept: 9 and -9, then the first three of the magnitude-2 entries by position.
  EXPECT_EQ(ToVector(Merge({tau}, {1}, options)), (std::vector<float>{2, -2, 9, 2, 0, 0, 0, -9, 0, 0}));
  options.method = "breadcrumbs";
  options.gamma = 0.1;  // drops one of the top: the first 9
  EXPECT_EQ(ToVector(Merge({tau}, {1}, options)), (std::vector<float>{2, -2, 0, 2, 0, -2, 0, -9, 0, 0}));
}

TEST(DenseMergeTest, BadMethodsAndParametersAreExplained) {
  DenseMergeOptions options;
  options.method = "slerp";
  EXPECT_NE(ValidateDenseMerge(options).message().find("unknown merge method"), std::string::npos);
  options.method = "ties";
  options.density = 0;
  EXPECT_EQ(ValidateDenseMerge(options).code(), absl::StatusCode::kInvalidArgument);
  options.density = 1;
  options.gamma = 1;
  EXPECT_EQ(ValidateDenseMerge(options).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MergeTensors({Values({1})}, {}, DenseMergeOptions{}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deltaserve::ops::merge
