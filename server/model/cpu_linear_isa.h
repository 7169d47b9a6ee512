// The instruction-set variants of the CPU linear kernel (cpu_linear.h).
//
// cpu_linear_isa.cc is compiled once per instruction set, each time into its own namespace:
// avx512 (x86-64-v4), avx2 (x86-64-v3: AVX2, FMA, F16C) and baseline (no flags, any CPU). Each
// gives one function per weight width. cpu_linear.cc picks the best set the running
// CPU supports when the program loads; tests run every supported set. Internal to model/.
#pragma once

#include <cstdint>
#include <vector>

namespace deltaserve::model::cpu_kernels {

// y[r, o] = (sum_i x[r, i] * w[o, i]) * scales[o] + bias[o] for r < rows, begin <= o < end.
struct LinearOperands {
  const float* x;         // rows of `in` floats, x_stride apart
  int64_t x_stride;
  const void* w;          // [out, in] contiguous, at the kernel's width
  const float* scales;    // [out] (int8) or null
  const float* bias;      // [out] or null
  float* y;               // rows y_stride apart
  int64_t y_stride;
  int64_t in;
};

// Blocking of the packed GEMM that products of many rows use: kGemmBlockOutputs weight rows by
// kGemmDepth inputs are packed at a time, with up to kGemmMaxRows input rows. A range function
// given scratch of kLinearScratchFloats floats for its thread uses the GEMM (for more than one
// row); given null, register tiles that read the weights in place. Callers pass scratch from
// kGemmMinRows rows: the GEMM packs the weights on every call, which fewer rows do not repay
// (one thread, [1536, 512] float32: 16 rows 49 GFLOP/s either way, 32 rows 56 vs 46,
// 512 rows 126 vs 44).
constexpr int64_t kGemmBlockOutputs = 512;
constexpr int64_t kGemmDepth = 256;
constexpr int64_t kGemmMaxRows = 16;
constexpr int64_t kGemmMinRows = 32;
constexpr int64_t kGemmMaxPanel = 32;  // outputs of one register tile (AVX-512's two vectors)
constexpr int64_t kLinearScratchFloats = (kGemmBlockOutputs + kGemmMaxRows) * kGemmDepth;

using LinearRangeFunction = void (*)(const LinearOperands& operands, int64_t rows, int64_t begin,
                                     int64_t end, float* scratch);

struct LinearKernelSet {
  const char* name;  // "avx512", "avx2", "baseline"
  LinearRangeFunction float32, bfloat16, float16, int8;
};

namespace avx512 { LinearKernelSet Kernels(); }
namespace avx2 { LinearKernelSet Kernels(); }
namespace baseline { LinearKernelSet Kernels(); }

// The sets this CPU can run, best first (baseline always last).
std::vector<LinearKernelSet> SupportedLinearKernelSets();

}  // namespace deltaserve::model::cpu_kernels
