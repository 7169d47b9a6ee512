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
    for (const LowRankFactor& factor : factors) {
      y.add_(at::matmul(at::matmul(x, factor.a.t()), factor.b.t()), factor.scale);
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
