// cpu_kernels::CpuLinear against a double-precision product written here as plain loops, over
// the same rounded (bfloat16, float16) or quantized (int8 with per-row scales) weights, for every
// instruction set this CPU runs (AVX-512, AVX2 with F16C, baseline) and both methods (register
// tiles and the packed GEMM, each forced on every shape): every remainder of the 4 x 4 register
// tile, of the single row's four parts and of the GEMM's row tile (14 or 6 rows), panel (32, 16
// or 8 outputs), packed depth (256 inputs) and block of outputs (512), strided input rows, output
// into a column range, bias, and sizes large enough to split over two intra-op threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "server/model/cpu_linear.h"

namespace deltaserve::model::cpu_kernels {
namespace {

constexpr at::ScalarType kWidths[] = {at::kFloat, at::kBFloat16, at::kHalf, at::kChar};

// y[r][o] = sum_i x[r][i] * w[o][i] * scale[o] (+ b[o]) in double, element by element, from the
// stored values themselves.
std::vector<double> ReferenceProduct(const at::Tensor& x, const WeightMatrix& w, const at::Tensor& b) {
  const int64_t rows = x.size(0), in = x.size(1), out = w.rows();
  const at::Tensor values = w.values.to(at::kDouble).contiguous();
  const at::Tensor scales = w.scales.defined() ? w.scales.to(at::kDouble) : at::ones({out}, at::kDouble);
  auto xa = x.accessor<float, 2>();
  auto wa = values.accessor<double, 2>();
  auto sa = scales.accessor<double, 1>();
  std::vector<double> y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double sum = 0;
      for (int64_t i = 0; i < in; ++i) sum += static_cast<double>(xa[r][i]) * wa[o][i];
      y[static_cast<size_t>(r * out + o)] = sum * sa[o] + (b.defined() ? b[o].item<double>() : 0.0);
    }
  }
  return y;
}

// Writes through every supported instruction set into a column range of a wider output, and
// checks the result and that the columns around it are untouched.
void ExpectMatchesReference(const at::Tensor& x, const WeightMatrix& w, const at::Tensor& b) {
  const std::vector<double> expected = ReferenceProduct(x, w, b);
  for (const LinearKernelSet& kernels : SupportedLinearKernelSets()) {
    for (LinearMethod method : {LinearMethod::kRegisterTiles, LinearMethod::kPackedGemm}) {
      const char* method_name = method == LinearMethod::kPackedGemm ? "packed GEMM" : "register tiles";
      at::Tensor wide = at::full({x.size(0), w.rows() + 5}, 7.0f);
      at::Tensor y = wide.narrow(1, 2, w.rows());
      CpuLinearInto(kernels, method, x, w, b, y);
      auto ya = y.accessor<float, 2>();
      double worst = 0;
      for (int64_t r = 0; r < y.size(0); ++r) {
        for (int64_t o = 0; o < y.size(1); ++o) {
          worst = std::max(worst, std::abs(ya[r][o] - expected[static_cast<size_t>(r * y.size(1) + o)]));
        }
      }
      // Sums of `in` products of unit-scale normals: float32 rounding stays far below 1e-3.
      EXPECT_LT(worst, 1e-3) << kernels.name << " " << method_name << " " << w.width() << " rows " << x.size(0)
                             << " in " << x.size(1) << " out " << w.rows();
      EXPECT_TRUE(at::equal(wide.narrow(1, 0, 2), at::full({x.size(0), 2}, 7.0f))) << kernels.name << method_name;
      EXPECT_TRUE(at::equal(wide.narrow(1, w.rows() + 2, 3), at::full({x.size(0), 3}, 7.0f)))
          << kernels.name << method_name;
    }
  }
}

TEST(CpuLinearTest, EveryInstructionSetOfThisCpuIsTested) {
  const std::vector<LinearKernelSet> sets = SupportedLinearKernelSets();
  ASSERT_FALSE(sets.empty());
  EXPECT_STREQ(sets.back().name, "baseline");
  EXPECT_STREQ(SelectedLinearKernels().name, sets.front().name);
  for (const LinearKernelSet& set : sets) std::printf("instruction set: %s\n", set.name);
}

// One test over all shapes and widths: ctest runs each test in its own process, and loading
// libtorch costs more than these products.
TEST(CpuLinearTest, MatchesADoublePrecisionProductForEveryWidthAndTileRemainder) {
  for (at::ScalarType width : kWidths) {
    for (int64_t rows : {1, 2, 3, 4, 5, 7, 8, 13, 64}) {
      for (int64_t in : {1, 16, 45, 50, 64, 65, 130}) {
        for (int64_t out : {1, 4, 10, 37}) {
          at::manual_seed(rows * 1000 + in + out);
          const at::Tensor x = at::randn({rows, in});
          const WeightMatrix w = StoreAtWidth(at::randn({out, in}), width);
          ExpectMatchesReference(x, w, at::Tensor());
          ExpectMatchesReference(x, w, at::randn({out}));
        }
      }
    }
  }
}

// The GEMM's blocking: rows around its row tiles (6, 14) and their multiples, inputs around the
// packed depth (256, 512), outputs around its panels and its 512-output block.
TEST(CpuLinearTest, PackedGemmMatchesADoublePrecisionProductAcrossItsBlocks) {
  at::set_num_threads(2);
  for (at::ScalarType width : kWidths) {
    for (int64_t rows : {6, 15, 28, 43}) {
      for (int64_t in : {255, 257, 520}) {
        for (int64_t out : {33, 530}) {
          at::manual_seed(rows * 1000 + in + out);
          const at::Tensor x = at::randn({rows, in});
          ExpectMatchesReference(x, StoreAtWidth(at::randn({out, in}), width),
                                 width == at::kChar ? at::randn({out}) : at::Tensor());
        }
      }
    }
  }
}

TEST(CpuLinearTest, ReadsStridedRowsAndSplitsOverThreads) {
  at::set_num_threads(2);
  for (at::ScalarType width : kWidths) {
    at::manual_seed(7);
    // Rows of a wider tensor, and a weight large enough that its output features are split into
    // several parallel ranges.
    const at::Tensor wide = at::randn({6, 700});
    const at::Tensor x = wide.narrow(1, 100, 300);
    ASSERT_EQ(x.stride(0), 700);
    ExpectMatchesReference(x, StoreAtWidth(at::randn({1030, 300}), width), at::randn({1030}));
    ExpectMatchesReference(x.narrow(0, 0, 1), StoreAtWidth(at::randn({1030, 300}), width), at::Tensor());
  }
}

TEST(CpuLinearTest, WidensSpecialValuesExactly) {
  // Half-precision subnormals, the largest finite values and signed zeros widen exactly on every
  // instruction set (the baseline converts in software).
  const at::Tensor special = at::tensor({0.0f, -0.0f, 5.96e-8f, -5.96e-8f, 6.0e-5f, 65504.0f, -65504.0f,
                                         1.0f, -2.5f, 0.333f, 1e-6f, -3e-7f, 100.0f, 0.5f, 0.25f, 3.0f, 7.0f},
                                        at::kFloat);
  for (at::ScalarType width : {at::kHalf, at::kBFloat16}) {
    const WeightMatrix w = StoreAtWidth(special.unsqueeze(0), width);
    for (int64_t i = 0; i < special.numel(); ++i) {
      at::Tensor x = at::zeros({1, special.numel()});
      x[0][i] = 1.0f;
      const double expected = w.values[0][i].item<double>();
      for (const LinearKernelSet& kernels : SupportedLinearKernelSets()) {
        at::Tensor y = at::empty({1, 1});
        CpuLinearInto(kernels, LinearMethod::kByRows, x, w, at::Tensor(), y);
        EXPECT_EQ(y.item<double>(), expected) << kernels.name << " " << width << " element " << i;
      }
    }
  }
}

TEST(CpuLinearTest, Int8KeepsEveryRowWithinHalfAStepOfItsValues) {
  at::manual_seed(11);
  const at::Tensor dense = at::randn({9, 70});
  dense[3].zero_();  // a row of zeros keeps a finite scale
  const WeightMatrix w = QuantizeInt8(dense);
  ASSERT_EQ(w.values.scalar_type(), at::kChar);
  const at::Tensor error = (w.Dense(at::kFloat) - dense).abs();
  EXPECT_TRUE((error <= w.scales.unsqueeze(1) * 0.5001).all().item<bool>());
  EXPECT_EQ(w.scales[3].item<float>(), 1.0f);
  EXPECT_EQ(w.values.abs().amax(1).max().item<int>(), 127);
}

TEST(CpuLinearTest, RefusesLayoutsItCannotRead) {
  const WeightMatrix w{at::randn({8, 16}), at::Tensor()};
  EXPECT_THROW(CpuLinear(at::randn({16, 2}).t(), w, at::Tensor()), c10::Error);  // columns strided
  EXPECT_THROW(CpuLinear(at::randn({2, 16}), WeightMatrix{at::randn({16, 8}).t(), at::Tensor()}, at::Tensor()),
               c10::Error);
  EXPECT_THROW(CpuLinear(at::randn({2, 15}), w, at::Tensor()), c10::Error);  // widths differ
  EXPECT_THROW(CpuLinear(at::randn({2, 16}), w, at::randn({7})), c10::Error);
  // int8 without scales, and scales on a floating width.
  EXPECT_THROW(CpuLinear(at::randn({2, 16}), WeightMatrix{w.values.to(at::kChar), at::Tensor()}, at::Tensor()),
               c10::Error);
  EXPECT_THROW(CpuLinear(at::randn({2, 16}), WeightMatrix{w.values, at::ones({8})}, at::Tensor()),
               c10::Error);
}

}  // namespace
}  // namespace deltaserve::model::cpu_kernels
