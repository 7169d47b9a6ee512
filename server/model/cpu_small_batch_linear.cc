#include "server/model/cpu_small_batch_linear.h"

#include <algorithm>

#include "server/model/cpu_lanes.h"
#include "server/model/worker_team.h"

namespace deltaserve::model::cpu_kernels {
namespace {

// Weight rows and input rows of one register tile: 4 x 4 accumulators of 16 lanes.
constexpr int64_t kTileOutputs = 4;
constexpr int64_t kTileRows = 4;
// Weight rows ahead that each load prefetches (two tiles ahead: the hardware prefetcher alone
// lags on four short interleaved streams). Products of an 8-row step on the medium demo model,
// one run, alternating: no prefetch 8.8 ms, 4 rows ahead 6.3, 8 rows 6.2-6.5, 16 rows 6.5.
constexpr int64_t kPrefetchRows = 8;

// A single input row streams the weights in one sequence instead (see SingleRow), prefetched
// this many floats ahead. One 256 MiB matrix times one row, 2 threads, alternating: tiles
// 47-51 GB/s; one stream prefetched 1 KiB ahead 59-60, 2 KiB 54-62, 4 KiB 66-78, 8 KiB 51-52,
// 16 KiB 52-60 (at::sum over 512 MiB: 57-68 GB/s in the same runs).
constexpr int64_t kSingleRowPrefetchFloats = 1024;

// Output features below which a call stays on the calling thread (about 128 KiB of weights
// for in = 512): forking threads costs more than such a product.
constexpr int64_t kParallelGrainElements = 32768;

struct Operands {
  const float* x;
  int64_t x_stride;
  const float* w;  // [out, in] contiguous
  const float* bias;  // [out] or null
  float* y;
  int64_t y_stride;
  int64_t in;
};

// One tile: y[r, o] for kOutputs weight rows from `o` and kRows input rows from `r`. Inlined
// into the per-instruction-set clones below, so the lanes compile to their widest registers;
// the loops over j and k unroll fully, leaving the accumulators in registers.
template <int kOutputs, int kRows>
__attribute__((always_inline)) inline void Tile(const Operands& p, int64_t o, int64_t r) {
  Lanes sums[kOutputs][kRows];
  const float* w[kOutputs];
  const float* x[kRows];
#pragma GCC unroll 16
  for (int j = 0; j < kOutputs; ++j) {
    w[j] = p.w + (o + j) * p.in;
#pragma GCC unroll 16
    for (int k = 0; k < kRows; ++k) sums[j][k] = Lanes{};
  }
#pragma GCC unroll 16
  for (int k = 0; k < kRows; ++k) x[k] = p.x + (r + k) * p.x_stride;
  int64_t i = 0;
  for (; i + kLanes <= p.in; i += kLanes) {
    Lanes weights[kOutputs];
#pragma GCC unroll 16
    for (int j = 0; j < kOutputs; ++j) {
      weights[j] = LoadLanes(w[j] + i);
      __builtin_prefetch(w[j] + i + kPrefetchRows * p.in);
    }
#pragma GCC unroll 16
    for (int k = 0; k < kRows; ++k) {
      const Lanes inputs = LoadLanes(x[k] + i);
#pragma GCC unroll 16
      for (int j = 0; j < kOutputs; ++j) sums[j][k] += weights[j] * inputs;
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < kOutputs; ++j) {
#pragma GCC unroll 16
    for (int k = 0; k < kRows; ++k) {
      float sum = SumOfLanes(sums[j][k]);
      for (int64_t tail = i; tail < p.in; ++tail) sum += w[j][tail] * x[k][tail];
      if (p.bias != nullptr) sum += p.bias[o + j];
      p.y[(r + k) * p.y_stride + o + j] = sum;
    }
  }
}

// All rows for the weight rows [begin, end): blocks of kTileOutputs weight rows, each block
// multiplied with the input rows kTileRows at a time while it is in cache.
// One input row: the weight rows one after another, a single sequential stream prefetched
// kSingleRowPrefetchFloats ahead, with four accumulators to cover the additions' latency.
__attribute__((always_inline)) inline void SingleRow(const Operands& p, int64_t begin, int64_t end) {
  for (int64_t o = begin; o < end; ++o) {
    const float* w = p.w + o * p.in;
    Lanes sums[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) sums[j] = Lanes{};
    int64_t i = 0;
    for (; i + 4 * kLanes <= p.in; i += 4 * kLanes) {
      __builtin_prefetch(w + i + kSingleRowPrefetchFloats);
      __builtin_prefetch(w + i + kSingleRowPrefetchFloats + kLanes);
      __builtin_prefetch(w + i + kSingleRowPrefetchFloats + 2 * kLanes);
      __builtin_prefetch(w + i + kSingleRowPrefetchFloats + 3 * kLanes);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        sums[j] += LoadLanes(w + i + j * kLanes) * LoadLanes(p.x + i + j * kLanes);
      }
    }
    float sum = SumOfLanes((sums[0] + sums[1]) + (sums[2] + sums[3]));
    for (; i < p.in; ++i) sum += w[i] * p.x[i];
    if (p.bias != nullptr) sum += p.bias[o];
    p.y[o] = sum;
  }
}

DELTASERVE_CPU_CLONES
void OutputRange(const Operands& p, int64_t rows, int64_t begin, int64_t end) {
  if (rows == 1) return SingleRow(p, begin, end);
  int64_t o = begin;
  for (; o + kTileOutputs <= end; o += kTileOutputs) {
    int64_t r = 0;
    for (; r + kTileRows <= rows; r += kTileRows) Tile<kTileOutputs, kTileRows>(p, o, r);
    switch (rows - r) {
      case 3: Tile<kTileOutputs, 3>(p, o, r); break;
      case 2: Tile<kTileOutputs, 2>(p, o, r); break;
      case 1: Tile<kTileOutputs, 1>(p, o, r); break;
      default: break;
    }
  }
  for (; o < end; ++o) {
    for (int64_t r = 0; r < rows; ++r) Tile<1, 1>(p, o, r);
  }
}

}  // namespace

at::Tensor SmallBatchLinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1) && x.stride(1) == 1 &&
                  weight.is_contiguous() && x.scalar_type() == at::kFloat &&
                  weight.scalar_type() == at::kFloat,
              "SmallBatchLinear: x [rows, in] with contiguous rows and weight [out, in] contiguous, float32");
  TORCH_CHECK(!bias.defined() || (bias.is_contiguous() && bias.numel() == weight.size(0) &&
                                  bias.scalar_type() == at::kFloat),
              "SmallBatchLinear: bias must be [out] float32");
  const int64_t rows = x.size(0);
  const int64_t out = weight.size(0);
  const int64_t in = weight.size(1);
  at::Tensor y = at::empty({rows, out}, x.options());
  const Operands operands{x.data_ptr<float>(), x.stride(0), weight.data_ptr<float>(),
                          bias.defined() ? bias.data_ptr<float>() : nullptr, y.data_ptr<float>(),
                          out, in};
  // Grain in output features, a multiple of the tile so that only the last range has a remainder.
  int64_t grain = std::max<int64_t>(1, kParallelGrainElements / std::max<int64_t>(1, in));
  grain = (grain + kTileOutputs - 1) / kTileOutputs * kTileOutputs;
  const int64_t blocks = (out + grain - 1) / grain;
  ParallelFor(0, blocks, 1, [&](int64_t first, int64_t last) {
    OutputRange(operands, rows, first * grain, std::min(out, last * grain));
  });
  return y;
}

}  // namespace deltaserve::model::cpu_kernels
