// NPO and SimNPO losses against values computed independently (Python's math module, from the
// formulas in the papers) for given log-probabilities, and their gradients' direction.
#include "server/ops/unlearn/unlearn_losses.h"

#include <gtest/gtest.h>

namespace deltaserve::ops::unlearn {
namespace {

TEST(UnlearnLossesTest, NpoMatchesTheFormula) {
  // beta 0.1; log-ratios 2 and -5: mean of 20 * log(1 + e^0.2) and 20 * log(1 + e^-0.5).
  at::Tensor theta = at::tensor({-10.0, -20.0}, at::kDouble);
  at::Tensor reference = at::tensor({-12.0, -15.0}, at::kDouble);
  EXPECT_NEAR(NpoLoss(theta, reference, 0.1).item<double>(), 12.722158535616984, 1e-12);
  // Equal models: -(2/beta) log(1/2) = (2/beta) log 2.
  EXPECT_NEAR(NpoLoss(reference, reference, 0.1).item<double>(), 20 * std::log(2.0), 1e-12);
  // Minimising it lowers the forget sequences' likelihood.
  at::Tensor logprobs = theta.clone().set_requires_grad(true);
  NpoLoss(logprobs, reference, 0.1).backward();
  EXPECT_TRUE((logprobs.grad() > 0).all().item<bool>());
}

TEST(UnlearnLossesTest, SimNpoMatchesTheFormula) {
  // beta 4.5, delta 0; mean NLLs 6/3 = 2 and 2/4 = 0.5: mean of (2/4.5) log(1 + e^-9) and
  // (2/4.5) log(1 + e^-2.25).
  at::Tensor nll = at::tensor({6.0, 2.0}, at::kDouble);
  at::Tensor lengths = at::tensor({3.0, 4.0}, at::kDouble);
  EXPECT_NEAR(SimNpoLoss(nll, lengths, 4.5, 0.0).item<double>(), 0.02229554691254899, 1e-12);
  at::Tensor sums = nll.clone().set_requires_grad(true);
  SimNpoLoss(sums, lengths, 4.5, 0.0).backward();
  EXPECT_TRUE((sums.grad() < 0).all().item<bool>()) << "minimising it raises the forget NLL";
}

}  // namespace
}  // namespace deltaserve::ops::unlearn
