// The forget losses of the unlearning methods, on per-sequence quantities of a batch (so that
// tests can check them against values worked out by hand, and the trainer can use them):
//   - NpoLoss: negative preference optimisation (Zhang et al. 2024),
//       mean over sequences of -(2/beta) log sigmoid(-beta (log pi_theta(y|x) - log pi_ref(y|x)))
//     with sequence log-probabilities (sums over the sequence's target tokens);
//   - SimNpoLoss: SimNPO (Fan et al. 2024), reference-free,
//       mean over sequences of -(2/beta) log sigmoid(beta (NLL_sum / |y| - delta)).
// Gradient ascent is the negated NLL and needs no function of its own. Tensors are 1-D of one
// length, float32 or float64, differentiable. Pure functions.
//   at::Tensor loss = NpoLoss(sequence_logprobs, reference_logprobs, 0.1);
#pragma once

#include <ATen/ATen.h>

namespace deltaserve::ops::unlearn {

at::Tensor NpoLoss(const at::Tensor& sequence_logprobs, const at::Tensor& reference_logprobs, double beta);
at::Tensor SimNpoLoss(const at::Tensor& nll_sums, const at::Tensor& lengths, double beta, double delta);

}  // namespace deltaserve::ops::unlearn
