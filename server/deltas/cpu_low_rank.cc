#include "server/deltas/cpu_low_rank.h"

#include <vector>

#ifdef DELTASERVE_HAVE_BLAS
// The Fortran BLAS entry point every BLAS (OpenBLAS, the reference one) exports.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b,
                       const int* ldb, const float* beta, float* c, const int* ldc);
#endif

// AVX2+FMA and baseline versions of the loops, picked when the program loads (GCC ifunc).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DELTASERVE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DELTASERVE_CPU_CLONES
#endif

namespace deltaserve::deltas {
namespace {

// Segments of up to this many rows loop row by row: the factors stay in cache between rows,
// and GEMM's packing would cost more than it saves.
constexpr int64_t kLoopRows = 8;

bool ColumnMajor(const at::Tensor& b) { return b.stride(0) == 1 && b.stride(1) == b.size(0); }

// shrunk[k] = sum_i A[k, i] x[i] for k < rank.
DELTASERVE_CPU_CLONES
void Shrink(const float* a, const float* x, float* shrunk, int64_t rank, int64_t in) {
  for (int64_t k = 0; k < rank; ++k) {
    const float* row = a + k * in;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < in; ++i) dot += row[i] * x[i];
    shrunk[k] = dot;
  }
}

// y[o] += scale * sum_k shrunk[k] B^T[k, o], B^T [rank, out] row-major.
DELTASERVE_CPU_CLONES
void ExpandTransposed(const float* b_t, const float* shrunk, float* y, int64_t rank, int64_t out, float scale) {
  for (int64_t k = 0; k < rank; ++k) {
    const float weight = scale * shrunk[k];
    const float* row = b_t + k * out;
#pragma omp simd
    for (int64_t o = 0; o < out; ++o) y[o] += weight * row[o];
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

#ifdef DELTASERVE_HAVE_BLAS
// The same for many rows through GEMM. Row-major M is column-major M^T, hence the transposes.
void AddLowRankGemm(const float* x, int64_t x_stride, float* y, int64_t y_stride, int64_t rows,
                    const LowRankFactor& factor) {
  const int n = static_cast<int>(rows);
  const int in = static_cast<int>(factor.a.size(1));
  const int out = static_cast<int>(factor.b.size(0));
  const int rank = static_cast<int>(factor.rank());
  const int ldx = static_cast<int>(x_stride), ldy = static_cast<int>(y_stride);
  thread_local std::vector<float> shrunk;
  shrunk.resize(static_cast<size_t>(rows) * rank);
  const float one = 1.0f, zero = 0.0f, scale = static_cast<float>(factor.scale);
  // shrunk[rows, rank] = x[rows, in] A^T.
  sgemm_("T", "N", &rank, &n, &in, &one, factor.a.data_ptr<float>(), &in, x, &ldx, &zero, shrunk.data(), &rank);
  // y[rows, out] += scale * shrunk B^T: B column-major is B^T row-major, i.e. B column-major.
  if (ColumnMajor(factor.b)) {
    sgemm_("N", "N", &out, &n, &rank, &scale, factor.b.data_ptr<float>(), &out, shrunk.data(), &rank, &one, y, &ldy);
  } else {
    sgemm_("T", "N", &out, &n, &rank, &scale, factor.b.data_ptr<float>(), &rank, shrunk.data(), &rank, &one, y, &ldy);
  }
}
#endif

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
#ifdef DELTASERVE_HAVE_BLAS
  if (rows > kLoopRows) return AddLowRankGemm(x, x_stride, y, y_stride, rows, factor);
#endif
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
