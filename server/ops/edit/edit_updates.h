// The closed-form weight updates of the locate-then-edit methods, on one layer's MLP down
// projection W [out, in] (out = hidden size, in = intermediate size), each returned as a
// low-rank factor (A [r, in], B [out, r]) with delta = B A, as DeltaSets store variants.
// Keys are down-projection inputs, values its outputs; "current values" are what the model
// (base plus any parent variant) computes now, so edits stack on a parent.
//   - RomeUpdate (Meng et al., "Locating and Editing Factual Associations in GPT", 2022): the
//     rank-1 delta (v* - W k)(C^-1 k*)^T / ((C^-1 k*)^T k), with k* the subject's mean key over
//     context prefixes, k its key in the bare prompt and v* the optimised value. Then
//     (W + delta) k = v* exactly. With no covariance (mom2_weight 0), C = I.
//   - MemitUpdate (Meng et al., "Mass-Editing Memory in a Transformer", 2023): for keys K
//     [in, n] and residuals R [out, n], delta = R K^T (lambda C + K K^T)^-1, the minimiser of
//     ||delta K - R||^2 + lambda tr(delta C delta^T); rank <= n. Solved in float64 (`solve`,
//     never an explicit inverse).
//   - AlphaEditUpdate (Fang et al., "AlphaEdit: Null-Space Constrained Knowledge Editing", ICLR
//     2025): with P the projector onto the null space of the preserved keys (NullSpaceProjector:
//     C's eigenvectors whose eigenvalues are below `threshold` times the largest), and K_p the
//     keys of earlier edits in the lineage, delta^T = (P (K K^T + K_p K_p^T) + lambda I)^-1 P K R^T.
//     delta's rows lie in P's range, so delta k0 = 0 for every preserved key k0 (P k0 = 0).
// Pure functions on the inputs' device; INVALID_ARGUMENT names the argument whose shape is wrong.
//   ASSIGN_OR_RETURN(deltas::LowRankFactor rome, RomeUpdate(c, k_star, k, w_k, v_star));
//   ASSIGN_OR_RETURN(deltas::LowRankFactor memit, MemitUpdate(c, keys, residuals, 1.5e4));
#pragma once

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"

namespace deltaserve::ops::edit {

// RomeUpdate: `covariance` [in, in] or undefined for the identity; `mean_key` k* [in], `key` k
// [in], `current_value` W k [out], `target_value` v* [out]. FAILED_PRECONDITION when
// (C^-1 k*)^T k is zero (the key is orthogonal to the update direction).
absl::StatusOr<deltas::LowRankFactor> RomeUpdate(const at::Tensor& covariance, const at::Tensor& mean_key,
                                                 const at::Tensor& key, const at::Tensor& current_value,
                                                 const at::Tensor& target_value);

// MemitUpdate: `covariance` C [in, in], `keys` K [in, n], `residuals` R [out, n] (already
// divided among the layers still to edit), `mom2_weight` lambda >= 0.
absl::StatusOr<deltas::LowRankFactor> MemitUpdate(const at::Tensor& covariance, const at::Tensor& keys,
                                                  const at::Tensor& residuals, double mom2_weight);

// NullSpaceProjector: P = U0 U0^T over the eigenvectors U0 of the symmetric `covariance` whose
// eigenvalues are below `threshold` times the largest one; [in, in] float64.
absl::StatusOr<at::Tensor> NullSpaceProjector(const at::Tensor& covariance, double threshold);

// AlphaEditUpdate: `projector` P [in, in], `keys` K [in, n], `residuals` R [out, n],
// `previous_keys` K_p [in, m] (m may be 0, or undefined), `l2` lambda > 0.
absl::StatusOr<deltas::LowRankFactor> AlphaEditUpdate(const at::Tensor& projector, const at::Tensor& keys,
                                                      const at::Tensor& residuals, const at::Tensor& previous_keys,
                                                      double l2);

}  // namespace deltaserve::ops::edit
