// DeltaSet: a variant as DESIGN.md's invariant has it, a set of low-rank factors per target
// module: for each (layer, projection) a list of (A [rank, in], B [out, rank], scale), whose
// contribution to the projection's output is sum(scale * (x A^T) B^T). A PEFT LoRA adapter
// is one factor per module; merges and fine-tunes may stack several. Immutable once built and
// shared read-only between threads; tensors live on one device in one dtype.
//   DeltaSet deltas(num_layers);
//   deltas.Add(3, model::Projection::kQuery, {a, b, 0.5});
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "server/model/llama_model.h"

namespace deltaserve::deltas {

inline constexpr int kProjectionCount = 7;

// ProjectionName gives the Hugging Face module name: "q_proj", ..., "down_proj".
const char* ProjectionName(model::Projection projection);
// ProjectionParent gives the module's parent: "self_attn" or "mlp".
const char* ProjectionParent(model::Projection projection);
// ProjectionShape gives (out_features, in_features) of a projection in `config`.
std::pair<int64_t, int64_t> ProjectionShape(const model::ModelConfig& config,
                                            model::Projection projection);

// The rank of one module kind in a DeltaSet: the largest total rank over layers, and how many
// layers have factors for it.
struct ModuleRank {
  std::string module;  // "q_proj", ...
  int64_t rank = 0;
  int64_t layers = 0;
};

struct LowRankFactor {
  at::Tensor a;  // [rank, in_features]
  at::Tensor b;  // [out_features, rank]
  double scale = 1.0;
  int64_t rank() const { return a.size(0); }
};

class DeltaSet {
 public:
  DeltaSet() = default;
  explicit DeltaSet(int64_t num_layers) : factors_(num_layers * kProjectionCount) {}

  void Add(int64_t layer, model::Projection projection, LowRankFactor factor);
  // Append adds every factor of `other` (same number of layers) after this set's own, so that
  // the result's delta is the sum of both: how a job stacks its new factors on a parent's.
  void Append(const DeltaSet& other);
  const std::vector<LowRankFactor>& Factors(int64_t layer, model::Projection projection) const;

  int64_t num_layers() const { return static_cast<int64_t>(factors_.size()) / kProjectionCount; }
  int64_t Bytes() const;
  // MaxRank returns the largest rank of any factor (0 when empty).
  int64_t MaxRank() const;
  // Ranks lists the module kinds that have factors, in projection order.
  std::vector<ModuleRank> Ranks() const;
  // RankSummary describes ranks per module kind, e.g. "q_proj:16 v_proj:16 down_proj:8".
  std::string RankSummary() const;
  // To returns a copy whose tensors are on `device` in `dtype`.
  DeltaSet To(const at::Device& device, at::ScalarType dtype) const;
  // Merged returns the dense delta sum(scale * B A) of one module ([out, in], float32), or an
  // undefined tensor when the module has none.
  at::Tensor Merged(int64_t layer, model::Projection projection) const;
  // AddTo adds the module's delta for `input` [tokens, in] into `output` [tokens, out], in
  // place, with plain differentiable operators (training and editing run through it; serving
  // uses a DeltaBackend's faster path: delta_backend.h).
  void AddTo(int64_t layer, model::Projection projection, const at::Tensor& input, at::Tensor& output) const;

 private:
  std::vector<std::vector<LowRankFactor>> factors_;  // [layer * kProjectionCount + projection]
};

}  // namespace deltaserve::deltas
