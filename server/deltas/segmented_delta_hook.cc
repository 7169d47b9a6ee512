#include "server/deltas/segmented_delta_hook.h"

#include <algorithm>
#include <vector>

#include "server/deltas/cpu_low_rank.h"
#include "server/model/worker_team.h"

namespace deltaserve::deltas {
namespace {

bool IsCpuFloatRows(const at::Tensor& tensor) {
  return tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.dim() == 2 &&
         tensor.stride(1) == 1;
}

// Segments below which one thread does them all: forking the intra-op threads costs more than
// a few segments' products.
constexpr int64_t kSegmentsPerTask = 4;

}  // namespace

void SegmentedDeltaHook::AddDelta(int64_t layer, model::Projection projection,
                                  const at::Tensor& input, at::Tensor& output) const {
  std::vector<const DeltaSegment*> cpu_segments;
  const bool cpu_rows = IsCpuFloatRows(input) && IsCpuFloatRows(output);
  for (const DeltaSegment& segment : segments_) {
    if (segment.deltas == nullptr || segment.length == 0) continue;
    const std::vector<LowRankFactor>& factors = segment.deltas->Factors(layer, projection);
    if (factors.empty()) continue;
    if (cpu_rows && std::all_of(factors.begin(), factors.end(), CpuLowRankApplies)) {
      cpu_segments.push_back(&segment);
      continue;
    }
    at::Tensor x = input.narrow(0, segment.start, segment.length);
    at::Tensor y = output.narrow(0, segment.start, segment.length);
    for (const LowRankFactor& factor : factors) {
      // mm and addmm_ rather than matmul and add_: half the operator calls.
      y.addmm_(at::mm(x, factor.a.t()), factor.b.t(), /*beta=*/1, /*alpha=*/factor.scale);
    }
  }
  // Segments write disjoint rows, so they run on all intra-op threads at once (each segment's
  // factors in order); BLAS calls inside a parallel section run single-threaded.
  const int64_t count = static_cast<int64_t>(cpu_segments.size());
  if (count == 0) return;
  const float* x = input.data_ptr<float>();
  float* y = output.data_ptr<float>();
  const int64_t x_stride = input.stride(0), y_stride = output.stride(0);
  model::ParallelFor(0, count, kSegmentsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const DeltaSegment& segment = *cpu_segments[i];
      for (const LowRankFactor& factor : segment.deltas->Factors(layer, projection)) {
        AddLowRankRows(x + segment.start * x_stride, x_stride, y + segment.start * y_stride, y_stride,
                       segment.length, factor);
      }
    }
  });
}

bool SegmentedDeltaHook::empty() const {
  for (const DeltaSegment& segment : segments_) {
    if (segment.deltas != nullptr) return false;
  }
  return true;
}

}  // namespace deltaserve::deltas
