// Low-rank merges of variants of one base (issue 4's `cat`/`linear` and `svd` methods), on
// DeltaSets, a module at a time:
//   - Concatenate: the exact weighted sum. For each module the result's factors are
//     A' = [w1 s1 A1; w2 s2 A2; ...] and B' = [B1 B2 ...] with scale 1, so B'A' = sum wi si Bi Ai
//     exactly (rank sum ri; no cross terms, unlike merging A and B separately).
//   - Recompress: a module's delta B'A' re-compressed to `rank` by truncated SVD without forming
//     the out x in matrix: QR of B' and of A'^T, SVD of the small core, then B = Qb U_k sqrt(S_k),
//     A = sqrt(S_k) V_k^T Qa^T. The relative Frobenius error is sqrt(sum of dropped s^2 / sum s^2).
// Pure functions, computed in float32 (SVD in float64) on the inputs' device; thread-compatible.
//   ASSIGN_OR_RETURN(DeltaSet merged, Concatenate({{&a, 0.6}, {&b, 0.4}}));
//   ASSIGN_OR_RETURN(RecompressedDeltas small, Recompress(merged, 16));
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"

namespace deltaserve::ops::merge {

struct WeightedDeltas {
  const deltas::DeltaSet* deltas = nullptr;
  double weight = 1.0;
};

// CheckInputs: INVALID_ARGUMENT when there are no inputs or they disagree on the number of
// layers (not variants of one base).
absl::Status CheckInputs(const std::vector<WeightedDeltas>& inputs);

// Concatenate: INVALID_ARGUMENT when CheckInputs fails or inputs disagree on a module's shape
// (the message names the module).
absl::StatusOr<deltas::DeltaSet> Concatenate(const std::vector<WeightedDeltas>& inputs);

struct ModuleError {
  int64_t layer = 0;
  std::string module;           // "q_proj", ...
  int64_t rank_before = 0;      // total rank of the module's factors
  int64_t rank_after = 0;
  double relative_error = 0.0;  // ||dW - dW_k||_F / ||dW||_F (0 for an all-zero delta)
};

struct RecompressedDeltas {
  deltas::DeltaSet deltas;  // one factor per module, rank <= `rank`
  std::vector<ModuleError> errors;
};

// TruncatedFactor keeps the leading `rank` terms of U diag(s) Vh (s descending, float64, U with
// orthonormal columns) as one factor B = U_k sqrt(s_k), A = sqrt(s_k) Vh_k in `dtype`, and
// returns it with the relative Frobenius error of what was dropped,
// sqrt((total - sum kept s^2) / total) (0 when total is 0). `total_squared` is the squared
// Frobenius norm of the matrix decomposed; by default sum s^2 (an exact, complete SVD).
std::pair<deltas::LowRankFactor, double> TruncatedFactor(const at::Tensor& u, const at::Tensor& s,
                                                         const at::Tensor& vh, int64_t rank,
                                                         at::ScalarType dtype, double total_squared = -1);

// MergeStep is called after each module a merge finishes with (modules done, modules in all);
// a non-OK status (a cancelled job) stops the merge, which returns that status.
using MergeStep = std::function<absl::Status(int64_t done, int64_t total)>;

// Recompress: INVALID_ARGUMENT when rank < 1. Modules whose rank is already <= `rank` are
// still combined into one factor (exactly, error 0 up to rounding).
absl::StatusOr<RecompressedDeltas> Recompress(const deltas::DeltaSet& input, int64_t rank,
                                              const MergeStep& step = nullptr);

// ModuleCount counts the (layer, projection) modules that have factors.
int64_t ModuleCount(const deltas::DeltaSet& deltas);

}  // namespace deltaserve::ops::merge
