#include "server/deltas/cpu_low_rank.h"

#include <vector>

#include "server/model/cpu_lanes.h"

namespace deltaserve::deltas {
namespace {

bool ColumnMajor(const at::Tensor& b) { return b.stride(0) == 1 && b.stride(1) == b.size(0); }

using model::cpu_kernels::kLanes;
using model::cpu_kernels::Lanes;
using model::cpu_kernels::LoadLanes;
using model::cpu_kernels::StoreLanes;
using model::cpu_kernels::SumOfLanes;

// shrunk[k] = sum_i A[k, i] x[i] for k < rank: four rows of A at a time against one load of x.
DELTASERVE_CPU_CLONES
void Shrink(const float* a, const float* x, float* shrunk, int64_t rank, int64_t in) {
  const int64_t vector_end = in / kLanes * kLanes;
  int64_t k = 0;
  for (; k + 4 <= rank; k += 4) {
    Lanes sums[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) sums[j] = Lanes{};
    for (int64_t i = 0; i < vector_end; i += kLanes) {
      const Lanes xs = LoadLanes(x + i);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) sums[j] += LoadLanes(a + (k + j) * in + i) * xs;
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      float dot = SumOfLanes(sums[j]);
      for (int64_t i = vector_end; i < in; ++i) dot += a[(k + j) * in + i] * x[i];
      shrunk[k + j] = dot;
    }
  }
  for (; k < rank; ++k) {
    float dot = 0;
    for (int64_t i = 0; i < in; ++i) dot += a[k * in + i] * x[i];
    shrunk[k] = dot;
  }
}

// y[o] += scale * sum_k shrunk[k] B^T[k, o], B^T [rank, out] row-major: 16 outputs at a time
// held in a register across all k.
DELTASERVE_CPU_CLONES
void ExpandTransposed(const float* b_t, const float* shrunk, float* y, int64_t rank, int64_t out, float scale) {
  const int64_t vector_end = out / kLanes * kLanes;
  for (int64_t o = 0; o < vector_end; o += kLanes) {
    Lanes sums{};
    for (int64_t k = 0; k < rank; ++k) sums += shrunk[k] * LoadLanes(b_t + k * out + o);
    StoreLanes(y + o, LoadLanes(y + o) + scale * sums);
  }
  for (int64_t o = vector_end; o < out; ++o) {
    float sum = 0;
    for (int64_t k = 0; k < rank; ++k) sum += shrunk[k] * b_t[k * out + o];
    y[o] += scale * sum;
  }
}

// y[o] += scale * sum_k B[o, k] shrunk[k], B [out, rank] row-major.
DELTASERVE_CPU_CLONES
void ExpandRowMajor(const float* b, const float* shrunk, float* y, int64_t rank, int64_t out, float scale) {
  for (int64_t o = 0; o < out; ++o) {
    const float* row = b + o * rank;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t k = 0; k < rank; ++k) dot += row[k] * shrunk[k];
    y[o] += scale * dot;
  }
}


}  // namespace

bool CpuLowRankApplies(const LowRankFactor& factor) {
  const at::Tensor& a = factor.a;
  const at::Tensor& b = factor.b;
  return a.device().is_cpu() && b.device().is_cpu() && a.scalar_type() == at::kFloat &&
         b.scalar_type() == at::kFloat && a.dim() == 2 && b.dim() == 2 && a.is_contiguous() &&
         (b.is_contiguous() || ColumnMajor(b));
}

void AddLowRankRows(const float* x, int64_t x_stride, float* y, int64_t y_stride, int64_t rows,
                    const LowRankFactor& factor) {
  const int64_t in = factor.a.size(1);
  const int64_t out = factor.b.size(0);
  const int64_t rank = factor.rank();
  const float scale = static_cast<float>(factor.scale);
  const float* a = factor.a.data_ptr<float>();
  const float* b = factor.b.data_ptr<float>();
  const bool transposed = ColumnMajor(factor.b);
  thread_local std::vector<float> shrunk;
  shrunk.resize(static_cast<size_t>(rank));
  for (int64_t row = 0; row < rows; ++row) {
    Shrink(a, x + row * x_stride, shrunk.data(), rank, in);
    if (transposed) {
      ExpandTransposed(b, shrunk.data(), y + row * y_stride, rank, out, scale);
    } else {
      ExpandRowMajor(b, shrunk.data(), y + row * y_stride, rank, out, scale);
    }
  }
}

DeltaSet ServingLayout(const DeltaSet& deltas) {
  DeltaSet result(deltas.num_layers());
  for (int64_t layer = 0; layer < deltas.num_layers(); ++layer) {
    for (int projection = 0; projection < kProjectionCount; ++projection) {
      const auto kind = static_cast<model::Projection>(projection);
      for (LowRankFactor factor : deltas.Factors(layer, kind)) {
        if (factor.b.device().is_cpu() && factor.b.scalar_type() == at::kFloat) {
          factor.b = factor.b.t().contiguous().t();
        }
        result.Add(layer, kind, std::move(factor));
      }
    }
  }
  return result;
}

}  // namespace deltaserve::deltas
