// The libtorch backend (delta_backend.h): per segment and factor, two matrix products.
#include <memory>

#include "server/deltas/delta_backend.h"

namespace deltaserve::deltas {
namespace {

class LibtorchStep : public model::ProjectionDeltaHook {
 public:
  explicit LibtorchStep(StepLayout layout) : layout_(std::move(layout)) {}
  void AddDelta(int64_t layer, model::Projection projection, const at::Tensor& input,
                at::Tensor& output) const override {
    for (const SegmentFactors& segment : layout_.Module(layer, projection)) {
      AddSegmentWithLibtorch(segment, input, output);
    }
  }

 private:
  StepLayout layout_;
};

class LibtorchDeltaBackend : public DeltaBackend {
 public:
  std::unique_ptr<model::ProjectionDeltaHook> ForStep(const std::vector<DeltaSegment>& segments) const override {
    StepLayout layout(segments);
    if (layout.empty()) return nullptr;
    return std::make_unique<LibtorchStep>(std::move(layout));
  }
  const char* name() const override { return "libtorch"; }
};

}  // namespace

std::unique_ptr<DeltaBackend> MakeLibtorchDeltaBackend() { return std::make_unique<LibtorchDeltaBackend>(); }

}  // namespace deltaserve::deltas
