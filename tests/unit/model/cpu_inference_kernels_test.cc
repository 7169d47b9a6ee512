// cpu_kernels::Add and SiluTimes against libtorch's operators (silu written out as
// x * sigmoid(x) in double): strided rows, widths that are and are not multiples of the 16-lane
// vectors, and gate values from -100 to 100 where the vector exponential clamps.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "server/model/cpu_inference_kernels.h"
#include "server/model/worker_team.h"

namespace deltaserve::model::cpu_kernels {
namespace {

TEST(CpuInferenceKernelsTest, AddAndSiluTimesMatchLibtorch) {
  c10::InferenceMode inference;
  SetWorkerTeamOfThisThread(2);
  at::manual_seed(5);
  for (int64_t width : {1, 15, 16, 37, 1536}) {
    for (int64_t rows : {1, 3, 300}) {
      // Column ranges of wider tensors: rows strided.
      const at::Tensor wide = at::randn({rows, 2 * width + 3}) * 4;
      const at::Tensor gate = wide.narrow(1, 0, width), up = wide.narrow(1, width + 3, width);
      const at::Tensor expected_sum = gate.to(at::kDouble) + up.to(at::kDouble);
      EXPECT_TRUE(at::allclose(Add(gate, up).to(at::kDouble), expected_sum, 0, 1e-6)) << width << " x " << rows;
      const at::Tensor g = gate.to(at::kDouble);
      const at::Tensor expected = g * at::sigmoid(g) * up.to(at::kDouble);
      const at::Tensor actual = SiluTimes(gate, up);
      EXPECT_TRUE(actual.is_contiguous());
      EXPECT_TRUE(at::allclose(actual.to(at::kDouble), expected, 1e-6, 1e-6))
          << width << " x " << rows << ": " << (actual.to(at::kDouble) - expected).abs().max().item<double>();
    }
  }
  // Saturation: silu(x) -> x for large x and -> 0 for very negative x, without NaN or infinity.
  const at::Tensor extremes = at::linspace(-100, 100, 401).unsqueeze(0);
  const at::Tensor ones = at::ones_like(extremes);
  const at::Tensor g = extremes.to(at::kDouble);
  const at::Tensor actual = SiluTimes(extremes, ones).to(at::kDouble);
  EXPECT_TRUE(actual.isfinite().all().item<bool>());
  EXPECT_TRUE(at::allclose(actual, g * at::sigmoid(g), 1e-6, 1e-6))
      << (actual - g * at::sigmoid(g)).abs().max().item<double>();
  SetWorkerTeamOfThisThread(0);
}

TEST(CpuInferenceKernelsTest, RefuseOperandsTheyCannotRead) {
  c10::InferenceMode inference;
  EXPECT_THROW(Add(at::randn({2, 3}), at::randn({3, 2})), c10::Error);
  EXPECT_THROW(SiluTimes(at::randn({4, 2}).t(), at::randn({2, 4})), c10::Error);  // elements strided
  EXPECT_THROW(SiluTimes(at::randn({2, 4}, at::kDouble), at::randn({2, 4}, at::kDouble)), c10::Error);
}

}  // namespace
}  // namespace deltaserve::model::cpu_kernels
