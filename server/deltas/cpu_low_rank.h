// The CPU float32 path of serving-time low-rank products: y += scale * (x A^T) B^T for a few
// rows of one segment, over raw rows, no libtorch operator per call. A decode step of 64
// sequences with 64 different adapters makes ~10,000 of these products (one per segment and
// target module), each only a few microseconds of arithmetic, so per-call overhead decides.
//
// Layout: A [rank, in] row-major; B [out, rank] either row-major or, faster, column-major
// (B^T stored row-major, so the expansion streams rows of B^T: see ServingLayout). Row by row,
// in 16-lane vectors (AVX-512, AVX2+FMA or baseline code chosen when the program loads):
// callers pass a few rows at a time (the CPU delta backend cuts segments into pieces of 8), so the
// factors stay in cache between rows. (BLAS GEMM for long segments was dropped: on this
// project's machine OpenBLAS's GEMM for rank-16 shapes ran slower than these loops spread over
// the worker team.)
// Thread-compatible: calls on disjoint output rows may run at once.
#pragma once

#include <cstdint>

#include "server/deltas/delta_set.h"

namespace deltaserve::deltas {

// Applies: the factor can take the CPU path (float32 CPU, A contiguous, B in either layout).
bool CpuLowRankApplies(const LowRankFactor& factor);

// AddLowRankRows adds scale * (x A^T) B^T into y for `rows` rows: x rows of `in` floats
// `x_stride` apart, y rows of `out` floats `y_stride` apart.
void AddLowRankRows(const float* x, int64_t x_stride, float* y, int64_t y_stride, int64_t rows,
                    const LowRankFactor& factor);

// ServingLayout returns `deltas` with every float32 CPU B factor stored column-major (same
// values and shape, strides (1, out)): what the adapter cache keeps for serving on CPU.
DeltaSet ServingLayout(const DeltaSet& deltas);

}  // namespace deltaserve::deltas
