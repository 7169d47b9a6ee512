// Low-rank merges against independent computations: the dense weighted sums are formed here
// directly from the inputs' factors (B·A products), and the SVD case is built from chosen
// orthonormal bases and singular values, so the expected results never come from the code
// under test.
#include "server/ops/merge/low_rank_merge.h"

#include <gtest/gtest.h>

#include <cmath>

namespace deltaserve::ops::merge {
namespace {

using model::Projection;

constexpr int64_t kOut = 12;
constexpr int64_t kIn = 10;

deltas::DeltaSet RandomDeltas(int64_t layers, int64_t rank, double scale, uint64_t seed) {
  at::manual_seed(seed);
  deltas::DeltaSet set(layers);
  for (int64_t layer = 0; layer < layers; ++layer) {
    set.Add(layer, Projection::kQuery, {at::randn({rank, kIn}), at::randn({kOut, rank}), scale});
    if (layer == 0) set.Add(layer, Projection::kDown, {at::randn({rank, kIn}), at::randn({kOut, rank}), scale});
  }
  return set;
}

// The dense delta of one module, from the raw factors: sum scale * B A.
at::Tensor Dense(const deltas::DeltaSet& set, int64_t layer, Projection projection) {
  at::Tensor sum = at::zeros({kOut, kIn});
  for (const deltas::LowRankFactor& factor : set.Factors(layer, projection)) {
    sum += at::matmul(factor.b, factor.a) * factor.scale;
  }
  return sum;
}

TEST(ConcatenateTest, IsTheExactWeightedSumWithRanksAdded) {
  deltas::DeltaSet first = RandomDeltas(2, 3, 0.5, 1);
  deltas::DeltaSet second = RandomDeltas(2, 5, 2.0, 2);
  auto merged = Concatenate({{&first, 0.6}, {&second, 0.4}});
  ASSERT_TRUE(merged.ok()) << merged.status();
  for (int64_t layer = 0; layer < 2; ++layer) {
    at::Tensor expected = Dense(first, layer, Projection::kQuery) * 0.6 + Dense(second, layer, Projection::kQuery) * 0.4;
    EXPECT_TRUE(at::allclose(Dense(*merged, layer, Projection::kQuery), expected, 1e-5, 1e-5)) << layer;
    ASSERT_EQ(merged->Factors(layer, Projection::kQuery).size(), 1u);
    EXPECT_EQ(merged->Factors(layer, Projection::kQuery)[0].rank(), 8);
  }
  EXPECT_TRUE(merged->Factors(1, Projection::kDown).empty());
  EXPECT_TRUE(merged->Factors(0, Projection::kValue).empty());
}

TEST(ConcatenateTest, OneAdapterReweightedAndCancelled) {
  deltas::DeltaSet only = RandomDeltas(1, 4, 1.5, 3);
  auto scaled = Concatenate({{&only, 0.25}});
  ASSERT_TRUE(scaled.ok());
  EXPECT_TRUE(at::allclose(Dense(*scaled, 0, Projection::kQuery), Dense(only, 0, Projection::kQuery) * 0.25,
                           1e-6, 1e-6));
  auto cancelled = Concatenate({{&only, 1.0}, {&only, -1.0}});
  ASSERT_TRUE(cancelled.ok());
  EXPECT_LT(Dense(*cancelled, 0, Projection::kQuery).abs().max().item<float>(), 1e-5);
  auto recompressed = Recompress(*cancelled, 2);
  ASSERT_TRUE(recompressed.ok());
  EXPECT_LT(Dense(recompressed->deltas, 0, Projection::kQuery).abs().max().item<float>(), 1e-4);
}

TEST(ConcatenateTest, RefusesInputsOfDifferentBases) {
  deltas::DeltaSet one_layer = RandomDeltas(1, 2, 1.0, 4);
  deltas::DeltaSet two_layers = RandomDeltas(2, 2, 1.0, 5);
  auto layers = Concatenate({{&one_layer, 1.0}, {&two_layers, 1.0}});
  EXPECT_EQ(layers.status().code(), absl::StatusCode::kInvalidArgument);
  deltas::DeltaSet wide(1);
  wide.Add(0, Projection::kQuery, {at::randn({2, kIn + 3}), at::randn({kOut, 2}), 1.0});
  auto shapes = Concatenate({{&one_layer, 1.0}, {&wide, 1.0}});
  EXPECT_EQ(shapes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(shapes.status().message().find("q_proj"), std::string::npos) << shapes.status();
  EXPECT_EQ(Concatenate({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RecompressTest, KeepsTheLeadingSingularDirectionsAndReportsTheTail) {
  // dW = U diag(s) V^T with orthonormal U [12, 6], V [10, 6] and s = 6..1, split as two factors.
  at::manual_seed(9);
  at::Tensor u = std::get<0>(at::linalg_qr(at::randn({kOut, 6}, at::kDouble)));
  at::Tensor v = std::get<0>(at::linalg_qr(at::randn({kIn, 6}, at::kDouble)));
  at::Tensor s = at::arange(6, 0, -1, at::kDouble);
  at::Tensor b = (u * s.unsqueeze(0)).to(at::kFloat);
  at::Tensor a = v.t().to(at::kFloat);
  deltas::DeltaSet set(1);
  set.Add(0, Projection::kQuery, {a.narrow(0, 0, 4), b.narrow(1, 0, 4), 1.0});
  set.Add(0, Projection::kQuery, {a.narrow(0, 4, 2) * 2.0, b.narrow(1, 4, 2), 0.5});
  auto recompressed = Recompress(set, 3);
  ASSERT_TRUE(recompressed.ok()) << recompressed.status();
  at::Tensor expected = at::matmul(u.narrow(1, 0, 3) * s.narrow(0, 0, 3).unsqueeze(0), v.narrow(1, 0, 3).t());
  EXPECT_TRUE(at::allclose(Dense(recompressed->deltas, 0, Projection::kQuery), expected.to(at::kFloat), 1e-4, 1e-4));
  ASSERT_EQ(recompressed->errors.size(), 1u);
  const ModuleError& error = recompressed->errors[0];
  EXPECT_EQ(error.module, "q_proj");
  EXPECT_EQ(error.rank_before, 6);
  EXPECT_EQ(error.rank_after, 3);
  EXPECT_NEAR(error.relative_error, std::sqrt((9.0 + 4.0 + 1.0) / 91.0), 1e-6);
  EXPECT_EQ(recompressed->deltas.Factors(0, Projection::kQuery)[0].rank(), 3);

  // A rank at least the delta's keeps it exactly.
  auto exact = Recompress(set, 8);
  ASSERT_TRUE(exact.ok());
  EXPECT_TRUE(at::allclose(Dense(exact->deltas, 0, Projection::kQuery), Dense(set, 0, Projection::kQuery), 1e-4, 1e-4));
  EXPECT_LT(exact->errors[0].relative_error, 1e-6);
  EXPECT_EQ(Recompress(set, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deltaserve::ops::merge
