// Dense task-vector merges (issue 4's task_arithmetic, ties, dare_linear, dare_ties,
// breadcrumbs, breadcrumbs_ties, magnitude_prune), one tensor at a time. Each input i is a
// task vector tau_i (a module's dense delta s_i B_i A_i) with a weight w_i:
//   - task_arithmetic:  lambda * sum w_i tau_i
//   - magnitude_prune:  each tau_i keeps its top `density` fraction by |tau|, then as above
//   - dare_linear:      each tau_i keeps entries with probability `density` (seeded Bernoulli),
//                       rescaled by 1/density, then as above
//   - breadcrumbs:      each tau_i drops its largest `gamma` fraction by |tau| (none when
//                       gamma*N < 1) and then keeps the next int(N*density) (at least one entry)
//   - ties, dare_ties, breadcrumbs_ties: sparsify as magnitude_prune / dare / breadcrumbs, elect
//     each entry's sign as the sign of sum w_i tau_i', then take the disjoint weighted mean
//     sum(w_i tau_i' over agreeing i) / sum(w_i over agreeing i) (a zero divisor becomes 1),
//     then lambda.
// Deterministic given the inputs and the seed. Pure functions; thread-compatible.
//   ASSIGN_OR_RETURN(at::Tensor merged, MergeTensors({tau_a, tau_b}, {0.6, 0.4}, options, seed));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"

namespace deltaserve::ops::merge {

struct DenseMergeOptions {
  std::string method = "task_arithmetic";
  double density = 1.0;  // fraction of entries kept, in (0, 1]
  double gamma = 0.01;   // breadcrumbs: fraction of the largest entries dropped, in [0, 1)
  double lambda = 1.0;   // final scale
};

// IsDenseMergeMethod: one of the method names above.
bool IsDenseMergeMethod(const std::string& method);

// ValidateDenseMerge explains a bad method name or parameter (INVALID_ARGUMENT).
absl::Status ValidateDenseMerge(const DenseMergeOptions& options);

// MergeTensors merges same-shaped float32 task vectors. `seed` drives DARE's sampling.
absl::StatusOr<at::Tensor> MergeTensors(const std::vector<at::Tensor>& task_vectors,
                                        const std::vector<double>& weights,
                                        const DenseMergeOptions& options, uint64_t seed);

}  // namespace deltaserve::ops::merge
