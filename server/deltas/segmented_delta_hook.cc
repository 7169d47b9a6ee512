#include "server/deltas/segmented_delta_hook.h"

#include <algorithm>
#include <vector>

#include <ATen/Parallel.h>

#ifdef DELTASERVE_HAVE_BLAS
// The Fortran BLAS entry points every BLAS (OpenBLAS, the reference one) exports.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b,
                       const int* ldb, const float* beta, float* c, const int* ldc);
extern "C" void sgemv_(const char* trans, const int* m, const int* n, const float* alpha, const float* a,
                       const int* lda, const float* x, const int* incx, const float* beta, float* y,
                       const int* incy);
#endif

namespace deltaserve::deltas {
namespace {

#ifdef DELTASERVE_HAVE_BLAS
bool IsCpuFloatRows(const at::Tensor& tensor) {
  return tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.dim() == 2 &&
         tensor.stride(1) == 1;
}

bool IsCpuFloatFactor(const LowRankFactor& factor) {
  return factor.a.is_contiguous() && factor.b.is_contiguous() && factor.a.scalar_type() == at::kFloat &&
         factor.b.scalar_type() == at::kFloat;
}

// Segments below which one thread does them all: forking the intra-op threads costs more than
// a few segments' products.
constexpr int64_t kSegmentsPerTask = 4;

// y += scale * (x A^T) B^T for row-major float32 CPU matrices, straight through BLAS: with
// many segments per step these products are tiny and libtorch's per-operator overhead would
// cost several times the arithmetic. Row-major M is column-major M^T, hence the transposes.
// Rows [start, start + rows) of `input` and `output`; no tensor views are made.
void AddLowRankCpu(const at::Tensor& input, at::Tensor& output, int64_t start, int64_t length,
                   const LowRankFactor& factor) {
  const int rows = static_cast<int>(length);
  const int in = static_cast<int>(input.size(1));
  const int out = static_cast<int>(output.size(1));
  const int rank = static_cast<int>(factor.rank());
  const int ldx = static_cast<int>(input.stride(0));
  const int ldy = static_cast<int>(output.stride(0));
  const float* x = input.data_ptr<float>() + start * ldx;
  float* y = output.data_ptr<float>() + start * ldy;
  thread_local std::vector<float> shrunk;
  shrunk.resize(static_cast<size_t>(rows) * rank);
  const float one = 1.0f, zero = 0.0f, scale = static_cast<float>(factor.scale);
  if (rows == 1) {  // matrix-vector products: no packing of A and B as GEMM would do
    const int step = 1;
    // shrunk[rank] = A x: A [rank, in] row-major is column-major [in, rank], transposed.
    sgemv_("T", &in, &rank, &one, factor.a.data_ptr<float>(), &in, x, &step, &zero, shrunk.data(), &step);
    // y[out] += scale * B shrunk, B [out, rank] row-major.
    sgemv_("T", &rank, &out, &scale, factor.b.data_ptr<float>(), &rank, shrunk.data(), &step, &one, y, &step);
    return;
  }
  // shrunk[rows, rank] = x[rows, in] A^T, A [rank, in].
  sgemm_("T", "N", &rank, &rows, &in, &one, factor.a.data_ptr<float>(), &in, x, &ldx, &zero,
         shrunk.data(), &rank);
  // y[rows, out] += scale * shrunk B^T, B [out, rank].
  sgemm_("T", "N", &out, &rows, &rank, &scale, factor.b.data_ptr<float>(), &rank, shrunk.data(), &rank,
         &one, y, &ldy);
}
#endif

}  // namespace

void SegmentedDeltaHook::AddDelta(int64_t layer, model::Projection projection,
                                  const at::Tensor& input, at::Tensor& output) const {
  std::vector<const DeltaSegment*> blas_segments;
#ifdef DELTASERVE_HAVE_BLAS
  const bool cpu_rows = IsCpuFloatRows(input) && IsCpuFloatRows(output);
#endif
  for (const DeltaSegment& segment : segments_) {
    if (segment.deltas == nullptr || segment.length == 0) continue;
    const std::vector<LowRankFactor>& factors = segment.deltas->Factors(layer, projection);
    if (factors.empty()) continue;
#ifdef DELTASERVE_HAVE_BLAS
    if (cpu_rows && std::all_of(factors.begin(), factors.end(), IsCpuFloatFactor)) {
      blas_segments.push_back(&segment);
      continue;
    }
#endif
    at::Tensor x = input.narrow(0, segment.start, segment.length);
    at::Tensor y = output.narrow(0, segment.start, segment.length);
    for (const LowRankFactor& factor : factors) {
      // mm and addmm_ rather than matmul and add_: half the operator calls.
      y.addmm_(at::mm(x, factor.a.t()), factor.b.t(), /*beta=*/1, /*alpha=*/factor.scale);
    }
  }
#ifdef DELTASERVE_HAVE_BLAS
  // Segments write disjoint rows, so they run on all intra-op threads at once (each segment's
  // factors in order); the BLAS calls inside a parallel region run single-threaded.
  const int64_t count = static_cast<int64_t>(blas_segments.size());
  at::parallel_for(0, count, kSegmentsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const DeltaSegment& segment = *blas_segments[i];
      for (const LowRankFactor& factor : segment.deltas->Factors(layer, projection)) {
        AddLowRankCpu(input, output, segment.start, segment.length, factor);
      }
    }
  });
#endif
}

bool SegmentedDeltaHook::empty() const {
  for (const DeltaSegment& segment : segments_) {
    if (segment.deltas != nullptr) return false;
  }
  return true;
}

}  // namespace deltaserve::deltas
