#include "server/deltas/delta_backend.h"

#include <algorithm>

namespace deltaserve::deltas {

StepLayout::StepLayout(const std::vector<DeltaSegment>& segments) {
  int64_t layers = 0;
  for (const DeltaSegment& segment : segments) {
    if (segment.deltas != nullptr) layers = std::max(layers, segment.deltas->num_layers());
  }
  modules_.resize(layers * kProjectionCount);
  for (const DeltaSegment& segment : segments) {
    if (segment.deltas == nullptr || segment.length == 0) continue;
    for (int64_t layer = 0; layer < segment.deltas->num_layers(); ++layer) {
      for (int p = 0; p < kProjectionCount; ++p) {
        const std::vector<LowRankFactor>& factors = segment.deltas->Factors(layer, static_cast<model::Projection>(p));
        if (factors.empty()) continue;
        modules_[layer * kProjectionCount + p].push_back({segment.start, segment.length, &factors});
        empty_ = false;
      }
    }
  }
}

const std::vector<SegmentFactors>& StepLayout::Module(int64_t layer, model::Projection projection) const {
  static const std::vector<SegmentFactors> kNone;
  const int64_t index = layer * kProjectionCount + static_cast<int64_t>(projection);
  return layer < num_layers() ? modules_[index] : kNone;
}

void AddSegmentWithLibtorch(const SegmentFactors& segment, const at::Tensor& input, at::Tensor& output) {
  at::Tensor x = input.narrow(0, segment.start, segment.length);
  at::Tensor y = output.narrow(0, segment.start, segment.length);
  for (const LowRankFactor& factor : *segment.factors) {
    // mm and addmm_ rather than matmul and add_: half the operator calls.
    y.addmm_(at::mm(x, factor.a.t()), factor.b.t(), /*beta=*/1, /*alpha=*/factor.scale);
  }
}

std::unique_ptr<DeltaBackend> MakeDeltaBackend(const at::Device& device) {
  return device.is_cpu() ? MakeCpuDeltaBackend() : MakeLibtorchDeltaBackend();
}

}  // namespace deltaserve::deltas
