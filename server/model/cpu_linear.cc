#include "server/model/cpu_linear.h"

#include <algorithm>
#include <vector>

#include "server/model/worker_team.h"

namespace deltaserve::model::cpu_kernels {
namespace {

// Weight bytes below which a call stays on the calling thread (128 KiB, for example
// 256 float32 outputs of 512 inputs): forking threads costs more than such a product.
constexpr int64_t kParallelGrainBytes = 131072;
// Output ranges are multiples of the kernel's tile of weight rows.
constexpr int64_t kTileOutputs = 4;

bool CpuSupports(bool avx512) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (avx512) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512cd");
  }
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
#else
  (void)avx512;
  return false;
#endif
}

// Chosen once, while the program loads.
const LinearKernelSet kSelectedKernels = SupportedLinearKernelSets().front();

bool UsesPackedGemm(LinearMethod method, int64_t rows) {
  switch (method) {
    case LinearMethod::kByRows: return rows >= kGemmMinRows;
    case LinearMethod::kRegisterTiles: return false;
    case LinearMethod::kPackedGemm: return true;
  }
  return false;
}

// The packed GEMM's scratch (cpu_linear_isa.h) for the calling thread, allocated on its first
// product of many rows and kept (528 KiB per thread that computes prompts).
float* GemmScratchOfThisThread() {
  thread_local std::vector<float> scratch;
  if (scratch.empty()) scratch.resize(kLinearScratchFloats);
  return scratch.data();
}

LinearRangeFunction ForWidth(const LinearKernelSet& kernels, at::ScalarType width) {
  switch (width) {
    case at::kFloat: return kernels.float32;
    case at::kBFloat16: return kernels.bfloat16;
    case at::kHalf: return kernels.float16;
    case at::kChar: return kernels.int8;
    default: return nullptr;
  }
}

}  // namespace

std::vector<LinearKernelSet> SupportedLinearKernelSets() {
  std::vector<LinearKernelSet> sets;
#if defined(__x86_64__)
  if (CpuSupports(true)) sets.push_back(avx512::Kernels());
  if (CpuSupports(false)) sets.push_back(avx2::Kernels());
#endif
  sets.push_back(baseline::Kernels());
  return sets;
}

const LinearKernelSet& SelectedLinearKernels() { return kSelectedKernels; }

void CpuLinearInto(const LinearKernelSet& kernels, LinearMethod method, const at::Tensor& x,
                   const WeightMatrix& weight, const at::Tensor& bias, at::Tensor& y) {
  const at::Tensor& w = weight.values;
  const LinearRangeFunction range = ForWidth(kernels, w.scalar_type());
  TORCH_CHECK(range != nullptr, "CpuLinear: weights of width ", w.scalar_type(),
              " are not float32, bfloat16, float16 or int8");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1) && x.stride(1) == 1 &&
                  w.is_contiguous() && x.scalar_type() == at::kFloat && x.device().is_cpu() &&
                  w.device().is_cpu(),
              "CpuLinear: x [rows, in] float32 with contiguous rows, weight [out, in] contiguous, on the CPU");
  TORCH_CHECK((w.scalar_type() == at::kChar) == weight.scales.defined() &&
                  (!weight.scales.defined() || (weight.scales.is_contiguous() &&
                                                weight.scales.numel() == w.size(0) &&
                                                weight.scales.scalar_type() == at::kFloat)),
              "CpuLinear: int8 weights need [out] float32 scales, other widths none");
  TORCH_CHECK(!bias.defined() || (bias.is_contiguous() && bias.numel() == w.size(0) &&
                                  bias.scalar_type() == at::kFloat),
              "CpuLinear: bias must be [out] float32");
  TORCH_CHECK(y.dim() == 2 && y.size(0) == x.size(0) && y.size(1) == w.size(0) && y.stride(1) == 1 &&
                  y.scalar_type() == at::kFloat,
              "CpuLinear: y must be [rows, out] float32 with contiguous rows");
  const int64_t rows = x.size(0);
  const int64_t out = w.size(0);
  const int64_t in = w.size(1);
  const LinearOperands operands{x.data_ptr<float>(),
                                x.stride(0),
                                w.data_ptr(),
                                weight.scales.defined() ? weight.scales.data_ptr<float>() : nullptr,
                                bias.defined() ? bias.data_ptr<float>() : nullptr,
                                y.data_ptr<float>(),
                                y.stride(0),
                                in};
  // Grain in output features, a multiple of the tile (or of the GEMM's widest panel) so that only
  // the last range has a remainder.
  const bool gemm = UsesPackedGemm(method, rows);
  const int64_t multiple = gemm ? kGemmMaxPanel : kTileOutputs;
  const int64_t row_bytes = std::max<int64_t>(1, in * static_cast<int64_t>(w.element_size()));
  int64_t grain = std::max<int64_t>(1, kParallelGrainBytes / row_bytes);
  grain = (grain + multiple - 1) / multiple * multiple;
  const int64_t blocks = (out + grain - 1) / grain;
  ParallelFor(0, blocks, 1, [&](int64_t first, int64_t last) {
    range(operands, rows, first * grain, std::min(out, last * grain), gemm ? GemmScratchOfThisThread() : nullptr);
  });
}

void CpuLinearInto(const at::Tensor& x, const WeightMatrix& weight, const at::Tensor& bias, at::Tensor& y) {
  CpuLinearInto(kSelectedKernels, LinearMethod::kByRows, x, weight, bias, y);
}

at::Tensor CpuLinear(const at::Tensor& x, const WeightMatrix& weight, const at::Tensor& bias) {
  at::Tensor y = at::empty({x.size(0), weight.rows()}, x.options());
  CpuLinearInto(kSelectedKernels, LinearMethod::kByRows, x, weight, bias, y);
  return y;
}

}  // namespace deltaserve::model::cpu_kernels
