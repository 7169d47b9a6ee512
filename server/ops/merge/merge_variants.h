// MergeVariants: one merge recipe over whole variants of one base, a module at a time (memory
// bounded by one module's dense delta, never the whole model):
//   - "cat" / "linear": the exact weighted sum by concatenation (rank = sum of input ranks;
//     `rank` is ignored).
//   - "svd": the exact weighted sum re-compressed to `rank` (QR + SVD of the small core);
//     "task_arithmetic" is the same with the weights times lambda.
//   - the dense methods of dense_merge.h (task_arithmetic, ties, dare_*, breadcrumbs*,
//     magnitude_prune): on each module's dense task vectors s_i B_i A_i, then truncated SVD to
//     `rank` (Compress).
// Optional LiNeS layer scaling multiplies layer l's merged delta by
// lines_alpha + lines_beta * l / (L - 1). Errors per re-compressed module are reported.
// Deterministic given the recipe (DARE draws from seed + module index). `step` is called after
// every module (progress; a non-OK status stops the merge). Thread-compatible.
//   ASSIGN_OR_RETURN(RecompressedDeltas merged, MergeVariants({{&a, 0.5}, {&b, 0.5}}, recipe));
#pragma once

#include <optional>

#include "server/ops/merge/dense_merge.h"
#include "server/ops/merge/low_rank_merge.h"

namespace deltaserve::ops::merge {

struct MergeRecipe {
  std::string method = "cat";
  int64_t rank = 16;  // output rank for every method but cat/linear
  double density = 1.0;
  double gamma = 0.01;
  double lambda = 1.0;
  uint64_t seed = 0;
  // LiNeS layer scaling; unset = none.
  std::optional<double> lines_alpha;
  double lines_beta = 0.0;
};

absl::Status ValidateMergeRecipe(const MergeRecipe& recipe);

// IsExactMerge: "cat" and "linear" keep every input factor (no re-compression).
bool IsExactMerge(const std::string& method);

absl::StatusOr<RecompressedDeltas> MergeVariants(const std::vector<WeightedDeltas>& inputs,
                                                 const MergeRecipe& recipe, const MergeStep& step = nullptr);

// Compress re-compresses a dense [out, in] delta to one factor of rank <= `rank` by truncated
// SVD (randomized, seeded by `seed`, when the matrix is much larger than the rank; exact
// otherwise) and returns it with its relative Frobenius error.
std::pair<deltas::LowRankFactor, double> Compress(const at::Tensor& dense, int64_t rank, at::ScalarType dtype,
                                                 uint64_t seed);

// EstimateMergeBytes bounds the peak memory of MergeVariants on variants of a base with
// `config`, given each input's size in float32 bytes and the sum over inputs of their largest
// module rank: the inputs, the output, and the working set of the largest module (for dense
// methods every input's dense delta, the merged one and a float64 SVD; for svd the float64 QR
// of the stacked factors; for cat a copy of the inputs).
int64_t EstimateMergeBytes(const model::ModelConfig& config, const MergeRecipe& recipe,
                           const std::vector<int64_t>& input_float32_bytes, int64_t summed_input_rank);

}  // namespace deltaserve::ops::merge
