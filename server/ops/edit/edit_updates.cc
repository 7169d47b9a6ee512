#include "server/ops/edit/edit_updates.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"

namespace deltaserve::ops::edit {
namespace {

absl::Status CheckShape(const char* what, const at::Tensor& tensor, std::vector<int64_t> shape) {
  if (tensor.defined() && tensor.sizes().vec() == shape) return absl::OkStatus();
  std::string wanted = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&wanted, i == 0 ? "" : ", ", shape[i]);
  return absl::InvalidArgumentError(absl::StrCat(what, " must be ", wanted, "]"));
}

absl::Status CheckMatrix(const char* what, const at::Tensor& tensor) {
  if (tensor.defined() && tensor.dim() == 2) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be a matrix"));
}

deltas::LowRankFactor Factor(const at::Tensor& a, const at::Tensor& b) {
  return {a.to(at::kFloat).contiguous(), b.to(at::kFloat).contiguous(), 1.0};
}

// Smallest LU pivot, relative to the largest, below which Solve calls a system singular. An
// exactly zero pivot is rare in floating point: a rank-3 K K^T in 8 dimensions factored (OpenBLAS
// on a Sapphire Rapids CPU) with pivots near 1e-16 of the largest, and linalg_solve returned
// entries of 1e15 without an error. Systems this ill-conditioned give no usable update anyway.
constexpr double kSmallestPivotRatio = 1e-12;

// Solve: X with M X = B in float64; FAILED_PRECONDITION when M is singular to working precision.
absl::StatusOr<at::Tensor> Solve(const at::Tensor& m, const at::Tensor& b, const char* singular) {
  try {
    auto [lu, pivots, info] = at::linalg_lu_factor_ex(m);
    const at::Tensor magnitudes = lu.diagonal().abs();
    const double smallest = magnitudes.min().item<double>(), largest = magnitudes.max().item<double>();
    // Negated so that NaN pivots count as singular too.
    if (info.item<int64_t>() != 0 || !(smallest > kSmallestPivotRatio * largest)) {
      return absl::FailedPreconditionError(singular);
    }
    return at::linalg_lu_solve(lu, pivots, b);
  } catch (const c10::Error&) {
    return absl::FailedPreconditionError(singular);
  }
}

}  // namespace

absl::StatusOr<deltas::LowRankFactor> RomeUpdate(const at::Tensor& covariance, const at::Tensor& mean_key,
                                                 const at::Tensor& key, const at::Tensor& current_value,
                                                 const at::Tensor& target_value) {
  if (!mean_key.defined() || mean_key.dim() != 1) return absl::InvalidArgumentError("the mean key must be a vector");
  const int64_t in = mean_key.size(0);
  RETURN_IF_ERROR(CheckShape("the key", key, {in}));
  if (!current_value.defined() || current_value.dim() != 1) {
    return absl::InvalidArgumentError("the current value must be a vector");
  }
  RETURN_IF_ERROR(CheckShape("the target value", target_value, {current_value.size(0)}));
  if (covariance.defined()) RETURN_IF_ERROR(CheckShape("the covariance", covariance, {in, in}));
  const at::Tensor k_star = mean_key.to(at::kDouble);
  const at::Tensor k = key.to(at::kDouble);
  at::Tensor direction = k_star;  // C^-1 k*
  if (covariance.defined()) {
    ASSIGN_OR_RETURN(at::Tensor solved, Solve(covariance.to(at::kDouble), k_star.unsqueeze(1),
                                              "the covariance is singular: compute it over more text, or use "
                                              "mom2_weight 0"));
    direction = solved.squeeze(1);
  }
  const double denominator = at::dot(direction, k).item<double>();
  if (std::abs(denominator) <= 1e-12 * direction.norm().item<double>() * k.norm().item<double>()) {
    return absl::FailedPreconditionError("the prompt's key is orthogonal to the update direction; no rank-1 "
                                         "update maps it to the target");
  }
  const at::Tensor a = (direction / denominator).unsqueeze(0);                                   // [1, in]
  const at::Tensor b = (target_value.to(at::kDouble) - current_value.to(at::kDouble)).unsqueeze(1);  // [out, 1]
  return Factor(a, b);
}

absl::StatusOr<deltas::LowRankFactor> MemitUpdate(const at::Tensor& covariance, const at::Tensor& keys,
                                                  const at::Tensor& residuals, double mom2_weight) {
  RETURN_IF_ERROR(CheckMatrix("the keys", keys));
  RETURN_IF_ERROR(CheckMatrix("the residuals", residuals));
  const int64_t in = keys.size(0), edits = keys.size(1);
  RETURN_IF_ERROR(CheckShape("the residuals", residuals, {residuals.size(0), edits}));
  RETURN_IF_ERROR(CheckShape("the covariance", covariance, {in, in}));
  if (mom2_weight < 0) return absl::InvalidArgumentError("mom2_weight must not be negative");
  const at::Tensor k = keys.to(at::kDouble);
  const at::Tensor system = mom2_weight * covariance.to(at::kDouble) + at::matmul(k, k.t());
  // delta = R K^T M^-1 = R (M^-1 K)^T, M symmetric: A = (M^-1 K)^T, B = R.
  ASSIGN_OR_RETURN(at::Tensor solved, Solve(system, k,
                                            "lambda C + K K^T is singular: give mom2_weight > 0 with a "
                                            "covariance of full rank"));
  return Factor(solved.t(), residuals.to(at::kDouble));
}

absl::StatusOr<at::Tensor> NullSpaceProjector(const at::Tensor& covariance, double threshold) {
  RETURN_IF_ERROR(CheckMatrix("the covariance", covariance));
  RETURN_IF_ERROR(CheckShape("the covariance", covariance, {covariance.size(0), covariance.size(0)}));
  if (threshold <= 0 || threshold >= 1) return absl::InvalidArgumentError("the null-space threshold must be in (0, 1)");
  auto [eigenvalues, eigenvectors] = at::linalg_eigh(covariance.to(at::kDouble));
  const double largest = eigenvalues.max().item<double>();
  const at::Tensor small = eigenvalues < threshold * std::max(largest, 0.0);
  const at::Tensor basis = eigenvectors.index({at::indexing::Slice(), small});
  return at::matmul(basis, basis.t());
}

absl::StatusOr<deltas::LowRankFactor> AlphaEditUpdate(const at::Tensor& projector, const at::Tensor& keys,
                                                      const at::Tensor& residuals, const at::Tensor& previous_keys,
                                                      double l2) {
  RETURN_IF_ERROR(CheckMatrix("the keys", keys));
  RETURN_IF_ERROR(CheckMatrix("the residuals", residuals));
  const int64_t in = keys.size(0), edits = keys.size(1);
  RETURN_IF_ERROR(CheckShape("the residuals", residuals, {residuals.size(0), edits}));
  RETURN_IF_ERROR(CheckShape("the projector", projector, {in, in}));
  if (previous_keys.defined() && previous_keys.numel() > 0) {
    RETURN_IF_ERROR(CheckShape("the previous keys", previous_keys, {in, previous_keys.size(1)}));
  }
  if (l2 <= 0) return absl::InvalidArgumentError("the AlphaEdit L2 weight must be positive");
  const at::Tensor p = projector.to(at::kDouble);
  const at::Tensor k = keys.to(at::kDouble);
  at::Tensor moments = at::matmul(k, k.t());
  if (previous_keys.defined() && previous_keys.numel() > 0) {
    const at::Tensor kp = previous_keys.to(at::kDouble);
    moments = moments + at::matmul(kp, kp.t());
  }
  const at::Tensor system = at::matmul(p, moments) + l2 * at::eye(in, p.options());
  // delta^T = M^-1 P K R^T: A = (M^-1 P K)^T [n, in], B = R.
  ASSIGN_OR_RETURN(at::Tensor solved, Solve(system, at::matmul(p, k), "the AlphaEdit system is singular"));
  return Factor(solved.t(), residuals.to(at::kDouble));
}

}  // namespace deltaserve::ops::edit
