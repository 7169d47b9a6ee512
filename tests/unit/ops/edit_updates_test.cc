// The closed-form edit updates against independent computations: ROME's invariant
// (W + delta) k = v* at rank 1; MEMIT's update against a direct least-squares solution of the
// same objective; AlphaEdit's update leaving preserved keys' outputs unchanged, and equal to
// MEMIT's when nothing is preserved; the streaming second moment against K^T K / n.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "server/ops/edit/edit_updates.h"
#include "server/ops/edit/second_moment.h"

namespace deltaserve::ops::edit {
namespace {

at::Tensor Random(std::vector<int64_t> shape) { return at::randn(shape, at::kDouble); }

// A symmetric positive definite matrix.
at::Tensor Spd(int64_t n) {
  at::Tensor m = Random({n, n});
  return at::matmul(m, m.t()) / n + 0.1 * at::eye(n, at::kDouble);
}

at::Tensor Dense(const deltas::LowRankFactor& factor) {
  return factor.scale * at::matmul(factor.b.to(at::kDouble), factor.a.to(at::kDouble));
}

TEST(SecondMomentTest, StreamingBatchesEqualTheWholeSet) {
  at::manual_seed(1);
  const at::Tensor keys = Random({100, 8});
  SecondMoment moment(8);
  for (int64_t start = 0; start < 100; start += 7) {
    ASSERT_TRUE(moment.Add(keys.slice(0, start, std::min<int64_t>(start + 7, 100))).ok());
  }
  EXPECT_EQ(moment.count(), 100);
  EXPECT_TRUE(at::allclose(moment.Mean().to(at::kDouble), at::matmul(keys.t(), keys) / 100, 1e-5, 1e-5));
  SecondMoment restored(moment.sum(), moment.count());
  EXPECT_TRUE(at::allclose(restored.Mean(), moment.Mean()));
  absl::Status wrong = moment.Add(Random({3, 5}));
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.message().find("keys must be [n, 8], not [3, 5]"), std::string::npos) << wrong;
}

TEST(EditUpdatesTest, RomeMapsTheKeyToTheTargetValueAtRankOne) {
  at::manual_seed(2);
  const at::Tensor w = Random({6, 8});
  const at::Tensor k_star = Random({8}), k = Random({8}), v_star = Random({6});
  for (const at::Tensor& covariance : {Spd(8), at::Tensor()}) {
    auto update = RomeUpdate(covariance, k_star, k, at::matmul(w, k), v_star);
    ASSERT_TRUE(update.ok()) << update.status();
    EXPECT_EQ(update->rank(), 1);
    const at::Tensor edited = w + Dense(*update);
    EXPECT_TRUE(at::allclose(at::matmul(edited, k), v_star, 1e-4, 1e-4));
    // The update's row direction is C^-1 k* (k* itself without a covariance).
    const at::Tensor direction = covariance.defined() ? at::linalg_solve(covariance, k_star.unsqueeze(1)).squeeze(1) : k_star;
    const at::Tensor row = update->a.to(at::kDouble).squeeze(0);
    EXPECT_NEAR(std::abs(at::dot(row, direction).item<double>()) / (row.norm() * direction.norm()).item<double>(), 1.0,
                1e-5);
  }
  EXPECT_EQ(RomeUpdate(at::Tensor(), Random({8}), Random({7}), Random({6}), Random({6})).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EditUpdatesTest, MemitSolvesTheRegularisedLeastSquaresProblem) {
  at::manual_seed(3);
  const at::Tensor c = Spd(8), keys = Random({8, 3}), residuals = Random({6, 3});
  const double lambda = 2.0;
  auto update = MemitUpdate(c, keys, residuals, lambda);
  ASSERT_TRUE(update.ok()) << update.status();
  EXPECT_LE(update->rank(), 3);
  // Directly: min ||X K - R||^2 + lambda ||X L||^2 with C = L L^T, i.e. least squares of
  // X [K, sqrt(lambda) L] against [R, 0].
  const at::Tensor l = at::linalg_cholesky(c);
  const at::Tensor design = at::cat({keys, std::sqrt(lambda) * l}, 1);                  // [8, 3 + 8]
  const at::Tensor target = at::cat({residuals, at::zeros({6, 8}, at::kDouble)}, 1);  // [6, 11]
  const at::Tensor direct = std::get<0>(at::linalg_lstsq(design.t(), target.t())).t();  // [6, 8]
  EXPECT_TRUE(at::allclose(Dense(*update), direct, 1e-4, 1e-4));
  EXPECT_EQ(MemitUpdate(c, keys, Random({6, 2}), lambda).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MemitUpdate(at::zeros({8, 8}, at::kDouble), keys, residuals, 0).status().code(),
            absl::StatusCode::kFailedPrecondition)
      << "K K^T of 3 keys in 8 dimensions is singular";
}

TEST(EditUpdatesTest, AlphaEditLeavesPreservedKeysAlone) {
  at::manual_seed(4);
  // Preserved keys span a 5-dimensional subspace of 8.
  const at::Tensor basis = Random({8, 5});
  const at::Tensor preserved = at::matmul(basis, Random({5, 40}));
  const at::Tensor c = at::matmul(preserved, preserved.t()) / 40;
  auto projector = NullSpaceProjector(c, 1e-8);
  ASSERT_TRUE(projector.ok()) << projector.status();
  EXPECT_NEAR(at::trace(*projector).item<double>(), 3.0, 1e-6) << "the null space has 3 dimensions";
  const at::Tensor keys = Random({8, 2}), residuals = Random({6, 2}), previous = Random({8, 1});
  auto update = AlphaEditUpdate(*projector, keys, residuals, previous, 1.0);
  ASSERT_TRUE(update.ok()) << update.status();
  const at::Tensor delta = Dense(*update);
  EXPECT_LT(at::matmul(delta, preserved).abs().max().item<double>(), 1e-6);
  EXPECT_LT((at::matmul(delta, keys) - residuals).norm().item<double>(), residuals.norm().item<double>())
      << "it still moves the edited keys towards their targets";
  // With nothing preserved (P = I) and no earlier edits, AlphaEdit is MEMIT with C = I.
  const at::Tensor identity = at::eye(8, at::kDouble);
  auto open = AlphaEditUpdate(identity, keys, residuals, at::Tensor(), 0.5);
  auto memit = MemitUpdate(identity, keys, residuals, 0.5);
  ASSERT_TRUE(open.ok() && memit.ok());
  EXPECT_TRUE(at::allclose(Dense(*open), Dense(*memit), 1e-5, 1e-5));
  EXPECT_EQ(AlphaEditUpdate(identity, keys, residuals, at::Tensor(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deltaserve::ops::edit
