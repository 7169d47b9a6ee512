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

// Segments are cut into pieces of at most this many rows, so that a long segment (many requests
// on one adapter) spreads over the intra-op threads like many short ones.
constexpr int64_t kPieceRows = 8;

// Pieces below which one thread does them all: waking the team costs more than a few pieces'
// products.
constexpr int64_t kPiecesPerTask = 4;

// Rows [start, start + length) of the batch, to receive one segment's low-rank terms.
struct Piece {
  const std::vector<LowRankFactor>* factors;
  int64_t start;
  int64_t length;
};

}  // namespace

void SegmentedDeltaHook::AddDelta(int64_t layer, model::Projection projection,
                                  const at::Tensor& input, at::Tensor& output) const {
  std::vector<Piece> pieces;
  const bool cpu_rows = IsCpuFloatRows(input) && IsCpuFloatRows(output);
  for (const DeltaSegment& segment : segments_) {
    if (segment.deltas == nullptr || segment.length == 0) continue;
    const std::vector<LowRankFactor>& factors = segment.deltas->Factors(layer, projection);
    if (factors.empty()) continue;
    if (cpu_rows && std::all_of(factors.begin(), factors.end(), CpuLowRankApplies)) {
      for (int64_t start = 0; start < segment.length; start += kPieceRows) {
        pieces.push_back({&factors, segment.start + start, std::min(kPieceRows, segment.length - start)});
      }
      continue;
    }
    at::Tensor x = input.narrow(0, segment.start, segment.length);
    at::Tensor y = output.narrow(0, segment.start, segment.length);
    for (const LowRankFactor& factor : factors) {
      // mm and addmm_ rather than matmul and add_: half the operator calls.
      y.addmm_(at::mm(x, factor.a.t()), factor.b.t(), /*beta=*/1, /*alpha=*/factor.scale);
    }
  }
  // Pieces write disjoint rows, so they run on all intra-op threads at once (each piece's
  // factors in order).
  const int64_t count = static_cast<int64_t>(pieces.size());
  if (count == 0) return;
  const float* x = input.data_ptr<float>();
  float* y = output.data_ptr<float>();
  const int64_t x_stride = input.stride(0), y_stride = output.stride(0);
  model::ParallelFor(0, count, kPiecesPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Piece& piece = pieces[i];
      for (const LowRankFactor& factor : *piece.factors) {
        AddLowRankRows(x + piece.start * x_stride, x_stride, y + piece.start * y_stride, y_stride,
                       piece.length, factor);
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
