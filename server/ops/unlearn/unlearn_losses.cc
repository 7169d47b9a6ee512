#include "server/ops/unlearn/unlearn_losses.h"

namespace deltaserve::ops::unlearn {

at::Tensor NpoLoss(const at::Tensor& sequence_logprobs, const at::Tensor& reference_logprobs, double beta) {
  const at::Tensor log_ratio = sequence_logprobs - reference_logprobs;
  // log sigmoid(z) computed stably as -softplus(-z).
  return (at::softplus(beta * log_ratio) * (2.0 / beta)).mean();
}

at::Tensor SimNpoLoss(const at::Tensor& nll_sums, const at::Tensor& lengths, double beta, double delta) {
  const at::Tensor margin = beta * (nll_sums / lengths - delta);
  return (at::softplus(-margin) * (2.0 / beta)).mean();
}

}  // namespace deltaserve::ops::unlearn
