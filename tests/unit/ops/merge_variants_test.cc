// MergeVariants end to end on small DeltaSets; expectations are formed from the inputs' dense
// deltas (B·A products here) and known identities, not from the merge code.
#include "server/ops/merge/merge_variants.h"

#include <gtest/gtest.h>

#include <cmath>

namespace deltaserve::ops::merge {
namespace {

using model::Projection;

deltas::DeltaSet Random(int64_t layers, int64_t rank, uint64_t seed) {
  at::manual_seed(seed);
  deltas::DeltaSet set(layers);
  for (int64_t layer = 0; layer < layers; ++layer) {
    set.Add(layer, Projection::kValue, {at::randn({rank, 8}), at::randn({6, rank}), 0.5});
  }
  return set;
}

at::Tensor Dense(const deltas::DeltaSet& set, int64_t layer) {
  at::Tensor sum = at::zeros({6, 8});
  for (const auto& factor : set.Factors(layer, Projection::kValue)) sum += at::matmul(factor.b, factor.a) * factor.scale;
  return sum;
}

TEST(MergeVariantsTest, CatWithLinesScalesEachLayer) {
  deltas::DeltaSet a = Random(3, 2, 1), b = Random(3, 3, 2);
  MergeRecipe recipe;
  recipe.method = "cat";
  recipe.lines_alpha = 0.5;
  recipe.lines_beta = 1.0;
  auto merged = MergeVariants({{&a, 1.0}, {&b, 2.0}}, recipe);
  ASSERT_TRUE(merged.ok()) << merged.status();
  const double scales[] = {0.5, 1.0, 1.5};
  for (int64_t layer = 0; layer < 3; ++layer) {
    at::Tensor expected = (Dense(a, layer) + Dense(b, layer) * 2.0) * scales[layer];
    EXPECT_TRUE(at::allclose(Dense(merged->deltas, layer), expected, 1e-5, 1e-5)) << layer;
  }
  EXPECT_TRUE(merged->errors.empty());
}

TEST(MergeVariantsTest, SvdErrorIsTheTailOfTheSingularValues) {
  deltas::DeltaSet a = Random(1, 3, 3), b = Random(1, 3, 4);
  MergeRecipe recipe;
  recipe.method = "svd";
  recipe.rank = 2;
  auto merged = MergeVariants({{&a, 0.7}, {&b, 0.3}}, recipe);
  ASSERT_TRUE(merged.ok()) << merged.status();
  at::Tensor exact = (Dense(a, 0) * 0.7 + Dense(b, 0) * 0.3).to(at::kDouble);
  at::Tensor s = at::linalg_svdvals(exact);
  const double tail = std::sqrt(s.narrow(0, 2, s.size(0) - 2).pow(2).sum().item<double>() /
                                s.pow(2).sum().item<double>());
  ASSERT_EQ(merged->errors.size(), 1u);
  EXPECT_NEAR(merged->errors[0].relative_error, tail, 1e-5);
  EXPECT_EQ(merged->errors[0].rank_before, 6);
  const double achieved = (Dense(merged->deltas, 0).to(at::kDouble) - exact).norm().item<double>() /
                          exact.norm().item<double>();
  EXPECT_NEAR(achieved, tail, 1e-4);
}

TEST(MergeVariantsTest, DenseMethodsRecompressToTheRequestedRank) {
  deltas::DeltaSet a = Random(2, 2, 5), b = Random(2, 2, 6);
  MergeRecipe recipe;
  recipe.method = "task_arithmetic";
  recipe.lambda = 0.5;
  recipe.rank = 8;  // at least the sum's rank: exact
  auto arithmetic = MergeVariants({{&a, 1.0}, {&b, 1.0}}, recipe);
  ASSERT_TRUE(arithmetic.ok()) << arithmetic.status();
  for (int64_t layer = 0; layer < 2; ++layer) {
    EXPECT_TRUE(at::allclose(Dense(arithmetic->deltas, layer), (Dense(a, layer) + Dense(b, layer)) * 0.5, 1e-4, 1e-4));
    EXPECT_LT(arithmetic->errors[layer].relative_error, 1e-6);
  }
  // TIES of one adapter with itself at equal weights is the adapter (every entry agrees).
  recipe.method = "ties";
  recipe.lambda = 1.0;
  auto ties = MergeVariants({{&a, 0.5}, {&a, 0.5}}, recipe);
  ASSERT_TRUE(ties.ok());
  EXPECT_TRUE(at::allclose(Dense(ties->deltas, 1), Dense(a, 1), 1e-4, 1e-4));
  // Rank 1 keeps one direction per module.
  recipe.rank = 1;
  auto small = MergeVariants({{&a, 1.0}, {&b, 1.0}}, recipe);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->deltas.Factors(0, Projection::kValue)[0].rank(), 1);
  EXPECT_GT(small->errors[0].relative_error, 0.0);
}

TEST(MergeVariantsTest, DareIsDeterministicPerSeedAndBadRecipesAreRefused) {
  deltas::DeltaSet a = Random(2, 2, 7), b = Random(2, 2, 8);
  MergeRecipe recipe;
  recipe.method = "dare_ties";
  recipe.density = 0.5;
  recipe.seed = 11;
  auto first = MergeVariants({{&a, 1.0}, {&b, 1.0}}, recipe);
  auto second = MergeVariants({{&a, 1.0}, {&b, 1.0}}, recipe);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_TRUE(at::allclose(Dense(first->deltas, 1), Dense(second->deltas, 1)));
  recipe.method = "slerp";
  EXPECT_EQ(MergeVariants({{&a, 1.0}}, recipe).status().code(), absl::StatusCode::kInvalidArgument);
  recipe.method = "svd";
  recipe.rank = 0;
  EXPECT_EQ(MergeVariants({{&a, 1.0}}, recipe).status().code(), absl::StatusCode::kInvalidArgument);
  deltas::DeltaSet deeper = Random(3, 2, 9);
  recipe.method = "ties";
  recipe.rank = 4;
  EXPECT_EQ(MergeVariants({{&a, 1.0}, {&deeper, 1.0}}, recipe).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deltaserve::ops::merge
