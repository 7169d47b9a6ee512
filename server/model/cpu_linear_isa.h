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
// kGemmMinRows rows: the GEMM packs the weights on every call, which fewer rows do not repay.
// Weights streamed per second, 2 threads, AVX-512, tiles / GEMM, [11008, 4096] float32 and
// bfloat16: 32 rows 4.14 / 3.86 and 2.67 / 2.02 GB/s; 64 rows 2.21 / 2.66 and 1.34 / 1.41;
// 128 rows 0.88 / 1.53 and 0.50 / 0.87. One thread, [1536, 512] float32: 32 rows 54 / 72
// GFLOP/s, 512 rows 49 / 129.
constexpr int64_t kGemmBlockOutputs = 512;
constexpr int64_t kGemmDepth = 256;
constexpr int64_t kGemmMaxRows = 16;
constexpr int64_t kGemmMinRows = 48;
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
