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

TEST(MergeVariantsTest, StepsReportEveryModuleAndAnErrorStopsTheMerge) {
  deltas::DeltaSet a = Random(4, 2, 5), b = Random(4, 2, 6);
  for (const char* method : {"svd", "ties"}) {
    MergeRecipe recipe;
    recipe.method = method;
    recipe.rank = 2;
    recipe.density = 0.5;
    std::vector<std::pair<int64_t, int64_t>> steps;
    auto merged = MergeVariants({{&a, 0.5}, {&b, 0.5}}, recipe, [&](int64_t done, int64_t total) {
      steps.push_back({done, total});
      return absl::OkStatus();
    });
    ASSERT_TRUE(merged.ok()) << method << ": " << merged.status();
    ASSERT_EQ(steps.size(), 4u) << method;
    for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(steps[i], std::make_pair(i + 1, int64_t{4})) << method;

    int calls = 0;
    auto stopped = MergeVariants({{&a, 0.5}, {&b, 0.5}}, recipe, [&](int64_t, int64_t) {
      return ++calls == 2 ? absl::CancelledError("stop") : absl::OkStatus();
    });
    EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled) << method;
    EXPECT_EQ(calls, 2) << method << ": nothing runs after the step that said stop";
  }
}

// Compress on matrices much larger than the rank takes the randomized path; its error must be
// the factor's true error and close to the optimum (the tail of the exact singular values).
TEST(MergeVariantsTest, CompressOfALargeMatrixIsNearOptimalAndReportsItsTrueError) {
  at::manual_seed(11);
  // A decaying spectrum (a low-rank signal plus noise) and a flat one (pure noise).
  const at::Tensor signal = at::matmul(at::randn({300, 20}), at::randn({20, 200})) + 0.1 * at::randn({300, 200});
  const at::Tensor noise = at::randn({300, 200});
  for (const at::Tensor& matrix : {signal, noise}) {
    auto [factor, error] = Compress(matrix, 16, at::kFloat, 5);
    ASSERT_EQ(factor.rank(), 16);
    const at::Tensor exact = matrix.to(at::kDouble);
    const at::Tensor approximation = at::matmul(factor.b, factor.a).to(at::kDouble) * factor.scale;
    const double achieved = (exact - approximation).norm().item<double>() / exact.norm().item<double>();
    EXPECT_NEAR(error, achieved, 1e-5) << "the reported error is the factor's";
    const at::Tensor s = at::linalg_svdvals(exact);
    const double optimal = std::sqrt(s.narrow(0, 16, s.size(0) - 16).pow(2).sum().item<double>() /
                                     s.pow(2).sum().item<double>());
    EXPECT_GE(error, optimal - 1e-9);
    EXPECT_LE(error, optimal * 1.02 + 1e-6) << "within 2% of the best rank-16 approximation";
    auto [again, same_error] = Compress(matrix, 16, at::kFloat, 5);
    EXPECT_TRUE(at::equal(again.a, factor.a)) << "deterministic given the seed";
  }
}

TEST(MergeVariantsTest, UnknownMethodsNameTheKnownOnes) {
  MergeRecipe recipe;
  recipe.method = "slerp";
  absl::Status status = ValidateMergeRecipe(recipe);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("cat, linear, svd"), std::string::npos) << status;
}

TEST(MergeVariantsTest, TheMemoryEstimateGrowsWithInputsAndIsLargestForDenseMethods) {
  model::ModelConfig config;
  config.hidden_size = 256;
  config.intermediate_size = 688;
  config.num_hidden_layers = 4;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 4;
  MergeRecipe svd, ties, cat;
  svd.method = "svd";
  ties.method = "ties";
  cat.method = "cat";
  const std::vector<int64_t> two(2, 1 << 20), eight(8, 1 << 20);
  EXPECT_LT(EstimateMergeBytes(config, ties, two, 32), EstimateMergeBytes(config, ties, eight, 128));
  EXPECT_LT(EstimateMergeBytes(config, svd, two, 32), EstimateMergeBytes(config, ties, two, 32));
  // The dense working set holds at least every input's dense [688, 256] delta in float32.
  EXPECT_GE(EstimateMergeBytes(config, ties, eight, 128), 8 * 688 * 256 * 4);
  EXPECT_GE(EstimateMergeBytes(config, cat, eight, 128), 2 * 8 * (1 << 20)) << "inputs and their concatenation";
}

}  // namespace
}  // namespace deltaserve::ops::merge
