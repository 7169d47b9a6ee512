// The CPU backend (delta_backend.h): each module's segments cut, once per step, into pieces of
// a few rows that run on all the worker team's threads (cpu_low_rank.h's loops); segments whose
// factors those loops cannot take (not float32 on the CPU) go through libtorch.
#include <algorithm>
#include <memory>

#include "server/deltas/cpu_low_rank.h"
#include "server/deltas/delta_backend.h"
#include "server/model/worker_team.h"

namespace deltaserve::deltas {
namespace {

// Segments are cut into pieces of at most this many rows, so that a long segment (many requests
// on one adapter) spreads over the intra-op threads like many short ones.
constexpr int64_t kPieceRows = 8;

// Pieces below which one thread does them all: waking the team costs more than a few pieces'
// products.
constexpr int64_t kPiecesPerTask = 4;

bool IsCpuFloatRows(const at::Tensor& tensor) {
  return tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.dim() == 2 &&
         tensor.stride(1) == 1;
}

// One module's work in a step: pieces for the loops, segments for libtorch.
struct ModuleWork {
  std::vector<SegmentFactors> pieces;
  std::vector<SegmentFactors> libtorch;
};

class CpuStep : public model::ProjectionDeltaHook {
 public:
  explicit CpuStep(const StepLayout& layout) : work_(layout.num_layers() * kProjectionCount) {
    for (int64_t layer = 0; layer < layout.num_layers(); ++layer) {
      for (int p = 0; p < kProjectionCount; ++p) {
        ModuleWork& work = work_[layer * kProjectionCount + p];
        for (const SegmentFactors& segment : layout.Module(layer, static_cast<model::Projection>(p))) {
          if (!std::all_of(segment.factors->begin(), segment.factors->end(), CpuLowRankApplies)) {
            work.libtorch.push_back(segment);
            continue;
          }
          for (int64_t offset = 0; offset < segment.length; offset += kPieceRows) {
            work.pieces.push_back({segment.start + offset, std::min(kPieceRows, segment.length - offset),
                                   segment.factors});
          }
        }
      }
    }
  }

  void AddDelta(int64_t layer, model::Projection projection, const at::Tensor& input,
                at::Tensor& output) const override {
    if (layer >= static_cast<int64_t>(work_.size()) / kProjectionCount) return;
    const ModuleWork& work = work_[layer * kProjectionCount + static_cast<int64_t>(projection)];
    for (const SegmentFactors& segment : work.libtorch) AddSegmentWithLibtorch(segment, input, output);
    if (work.pieces.empty()) return;
    if (!IsCpuFloatRows(input) || !IsCpuFloatRows(output)) {
      // Not rows the loops can read (never in serving; a caller's odd layout): libtorch.
      for (const SegmentFactors& piece : work.pieces) AddSegmentWithLibtorch(piece, input, output);
      return;
    }
    // Pieces write disjoint rows, so they run on all intra-op threads at once (each piece's
    // factors in order).
    const float* x = input.data_ptr<float>();
    float* y = output.data_ptr<float>();
    const int64_t x_stride = input.stride(0), y_stride = output.stride(0);
    const std::vector<SegmentFactors>& pieces = work.pieces;
    model::ParallelFor(0, static_cast<int64_t>(pieces.size()), kPiecesPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const SegmentFactors& piece = pieces[i];
        for (const LowRankFactor& factor : *piece.factors) {
          AddLowRankRows(x + piece.start * x_stride, x_stride, y + piece.start * y_stride, y_stride,
                         piece.length, factor);
        }
      }
    });
  }

 private:
  std::vector<ModuleWork> work_;  // [layer * kProjectionCount + projection]
};

class CpuDeltaBackend : public DeltaBackend {
 public:
  std::unique_ptr<model::ProjectionDeltaHook> ForStep(const std::vector<DeltaSegment>& segments) const override {
    const StepLayout layout(segments);
    if (layout.empty()) return nullptr;
    return std::make_unique<CpuStep>(layout);
  }
  const char* name() const override { return "cpu"; }
};

}  // namespace

std::unique_ptr<DeltaBackend> MakeCpuDeltaBackend() { return std::make_unique<CpuDeltaBackend>(); }

}  // namespace deltaserve::deltas
