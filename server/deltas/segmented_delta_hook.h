// SegmentedDeltaHook: the one data path for "not the base". A batch's tokens are grouped into
// consecutive segments, each served by one variant (or the base: no deltas). After each base
// projection it adds, for every segment with a variant, scale * (x_s A^T) B^T to that
// segment's rows, so the base products run once for the whole batch and each variant pays only
// for its own low-rank terms (mixed ranks, no padding). Holds plain pointers: the DeltaSets
// must outlive the forward pass. Const and thread-compatible.
#pragma once

#include <cstdint>
#include <vector>

#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"

namespace deltaserve::deltas {

struct DeltaSegment {
  int64_t start = 0;   // first row of the batch's tokens
  int64_t length = 0;  // rows
  const DeltaSet* deltas = nullptr;  // nullptr: the base model
};

class SegmentedDeltaHook : public model::ProjectionDeltaHook {
 public:
  explicit SegmentedDeltaHook(std::vector<DeltaSegment> segments) : segments_(std::move(segments)) {}
  void AddDelta(int64_t layer, model::Projection projection, const at::Tensor& input,
                at::Tensor& output) const override;
  bool empty() const;

 private:
  std::vector<DeltaSegment> segments_;
};

}  // namespace deltaserve::deltas
