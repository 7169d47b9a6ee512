// The instruction-set variants of the small-batch linear kernel (cpu_small_batch_linear.h).
//
// cpu_linear_isa.cc is compiled once per instruction set, each time into its own namespace:
// avx512 (x86-64-v4), avx2 (x86-64-v3: AVX2, FMA, F16C) and baseline (no flags, any CPU). Each
// gives one function per weight width. cpu_small_batch_linear.cc picks the best set the running
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

using LinearRangeFunction = void (*)(const LinearOperands& operands, int64_t rows, int64_t begin,
                                     int64_t end);

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
