#include "server/deltas/segmented_delta_hook.h"

namespace deltaserve::deltas {

void SegmentedDeltaHook::AddDelta(int64_t layer, model::Projection projection,
                                  const at::Tensor& input, at::Tensor& output) const {
  for (const DeltaSegment& segment : segments_) {
    if (segment.deltas == nullptr || segment.length == 0) continue;
    const std::vector<LowRankFactor>& factors = segment.deltas->Factors(layer, projection);
    if (factors.empty()) continue;
    at::Tensor x = input.narrow(0, segment.start, segment.length);
    at::Tensor y = output.narrow(0, segment.start, segment.length);
    // mm and addmm_ rather than matmul and add_: with many segments per step these tiny
    // products are dominated by per-op overhead, and this is half the operator calls.
    for (const LowRankFactor& factor : factors) {
      y.addmm_(at::mm(x, factor.a.t()), factor.b.t(), /*beta=*/1, /*alpha=*/factor.scale);
    }
  }
}

bool SegmentedDeltaHook::empty() const {
  for (const DeltaSegment& segment : segments_) {
    if (segment.deltas != nullptr) return false;
  }
  return true;
}

}  // namespace deltaserve::deltas
