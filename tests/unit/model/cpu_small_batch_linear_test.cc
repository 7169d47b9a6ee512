// cpu_kernels::SmallBatchLinear against a double-precision product written here as plain loops:
// every remainder of the 4 x 4 register tile (rows and output features not multiples of 4, an
// input width not a multiple of the 16 lanes), strided input rows, bias, and sizes large enough
// to split over two intra-op threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "server/model/cpu_small_batch_linear.h"

namespace deltaserve::model::cpu_kernels {
namespace {

// y[r][o] = sum_i x[r][i] w[o][i] (+ b[o]) in double, element by element.
std::vector<double> ReferenceProduct(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const int64_t rows = x.size(0), in = x.size(1), out = w.size(0);
  auto xa = x.accessor<float, 2>();
  auto wa = w.accessor<float, 2>();
  std::vector<double> y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double sum = b.defined() ? b[o].item<double>() : 0.0;
      for (int64_t i = 0; i < in; ++i) sum += static_cast<double>(xa[r][i]) * wa[o][i];
      y[static_cast<size_t>(r * out + o)] = sum;
    }
  }
  return y;
}

void ExpectMatchesReference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const at::Tensor y = SmallBatchLinear(x, w, b);
  ASSERT_EQ(y.sizes(), (at::IntArrayRef{x.size(0), w.size(0)}));
  const std::vector<double> expected = ReferenceProduct(x, w, b);
  auto ya = y.accessor<float, 2>();
  double worst = 0;
  for (int64_t r = 0; r < y.size(0); ++r) {
    for (int64_t o = 0; o < y.size(1); ++o) {
      worst = std::max(worst, std::abs(ya[r][o] - expected[static_cast<size_t>(r * y.size(1) + o)]));
    }
  }
  // Sums of `in` products of unit-scale normals: float32 rounding stays far below 1e-3.
  EXPECT_LT(worst, 1e-3) << "rows " << x.size(0) << " in " << x.size(1) << " out " << w.size(0);
}

// One test over all shapes: ctest runs each test in its own process, and loading libtorch costs
// more than these products.
TEST(SmallBatchLinearTest, MatchesADoublePrecisionProductForEveryTileRemainder) {
  for (int64_t rows : {1, 2, 3, 4, 5, 7, 8, 13, 64}) {
    for (int64_t in : {16, 45, 512}) {
      for (int64_t out : {1, 4, 37, 130}) {
        at::manual_seed(rows * 1000 + in + out);
        const at::Tensor x = at::randn({rows, in});
        const at::Tensor w = at::randn({out, in});
        ExpectMatchesReference(x, w, at::Tensor());
        ExpectMatchesReference(x, w, at::randn({out}));
      }
    }
  }
}

TEST(SmallBatchLinearTest, ReadsStridedRowsAndSplitsOverThreads) {
  at::set_num_threads(2);
  at::manual_seed(7);
  // Rows of a wider tensor (as the q columns of a fused qkv output), and a weight large enough
  // that its output features are split into several parallel ranges.
  const at::Tensor wide = at::randn({6, 700});
  const at::Tensor x = wide.narrow(1, 100, 300);
  ASSERT_EQ(x.stride(0), 700);
  ExpectMatchesReference(x, at::randn({1030, 300}), at::randn({1030}));
}

TEST(SmallBatchLinearTest, RefusesLayoutsItCannotRead) {
  const at::Tensor w = at::randn({8, 16});
  EXPECT_THROW(SmallBatchLinear(at::randn({16, 2}).t(), w, at::Tensor()), c10::Error);  // columns strided
  EXPECT_THROW(SmallBatchLinear(at::randn({2, 16}), at::randn({16, 8}).t(), at::Tensor()), c10::Error);
  EXPECT_THROW(SmallBatchLinear(at::randn({2, 15}), w, at::Tensor()), c10::Error);  // widths differ
  EXPECT_THROW(SmallBatchLinear(at::randn({2, 16}), w, at::randn({7})), c10::Error);
}

}  // namespace
}  // namespace deltaserve::model::cpu_kernels
