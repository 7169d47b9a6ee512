// DeltaBackend: how serving applies a step's variants. One is chosen when the engine is created,
// for the model's device (MakeDeltaBackend). Once per step the engine hands it the batch's
// segments (consecutive rows served by one variant, or the base); the backend lays out at once
// everything the step's projections need (for every layer and projection, which rows receive
// which low-rank factors) and returns the hook the forward pass calls after each base
// projection, which then only looks its entry up and runs it. The base products run once for
// the whole batch; each variant pays only for its own low-rank terms (mixed ranks, no padding).
//
// Backends:
//  - CPU: the raw-row loops of cpu_low_rank.h, rows cut into pieces spread over the worker team,
//    for float32 factors on the CPU (others in the step go through libtorch);
//  - libtorch: per segment and factor, y += scale * (x A^T) B^T with two matrix products; any
//    device and dtype. CUDA uses it today; SGMV kernels (engine/cuda/sgmv.h) belong behind this
//    interface, fed the same per-step layout.
// Results equal a forward pass over the merged weights to float rounding. Backends are
// immutable and shared; a step's hook holds plain pointers into the segments' DeltaSets, which
// must outlive the forward pass. Thread-compatible.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"

namespace deltaserve::deltas {

struct DeltaSegment {
  int64_t start = 0;   // first row of the batch's tokens
  int64_t length = 0;  // rows
  const DeltaSet* deltas = nullptr;  // nullptr: the base model
};

// One segment's factors for one (layer, projection): what a step's layout lists per module.
struct SegmentFactors {
  int64_t start = 0;
  int64_t length = 0;
  const std::vector<LowRankFactor>* factors = nullptr;
};

// StepLayout: for every (layer, projection) of a step, the segments with factors there, in row
// order. Built once per step (every backend starts from it).
class StepLayout {
 public:
  explicit StepLayout(const std::vector<DeltaSegment>& segments);
  const std::vector<SegmentFactors>& Module(int64_t layer, model::Projection projection) const;
  bool empty() const { return empty_; }
  int64_t num_layers() const { return static_cast<int64_t>(modules_.size()) / kProjectionCount; }

 private:
  std::vector<std::vector<SegmentFactors>> modules_;  // [layer * kProjectionCount + projection]
  bool empty_ = true;
};

// AddSegmentWithLibtorch adds one segment's factors to its rows of `output` with libtorch
// operators (any device and dtype).
void AddSegmentWithLibtorch(const SegmentFactors& segment, const at::Tensor& input, at::Tensor& output);

class DeltaBackend {
 public:
  virtual ~DeltaBackend() = default;
  // ForStep returns the hook for one step's segments, or nullptr when no segment has a variant.
  virtual std::unique_ptr<model::ProjectionDeltaHook> ForStep(const std::vector<DeltaSegment>& segments) const = 0;
  virtual const char* name() const = 0;  // "cpu", "libtorch"
};

// The CPU loops' backend and the libtorch one; MakeDeltaBackend picks for a device.
std::unique_ptr<DeltaBackend> MakeCpuDeltaBackend();
std::unique_ptr<DeltaBackend> MakeLibtorchDeltaBackend();
std::unique_ptr<DeltaBackend> MakeDeltaBackend(const at::Device& device);

}  // namespace deltaserve::deltas
