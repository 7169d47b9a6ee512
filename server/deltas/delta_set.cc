#include "server/deltas/delta_set.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"

namespace deltaserve::deltas {

using model::Projection;

const char* ProjectionName(Projection projection) {
  switch (projection) {
    case Projection::kQuery: return "q_proj";
    case Projection::kKey: return "k_proj";
    case Projection::kValue: return "v_proj";
    case Projection::kOutput: return "o_proj";
    case Projection::kGate: return "gate_proj";
    case Projection::kUp: return "up_proj";
    case Projection::kDown: return "down_proj";
  }
  return "?";
}

const char* ProjectionParent(Projection projection) {
  switch (projection) {
    case Projection::kQuery:
    case Projection::kKey:
    case Projection::kValue:
    case Projection::kOutput: return "self_attn";
    default: return "mlp";
  }
}

std::pair<int64_t, int64_t> ProjectionShape(const model::ModelConfig& config, Projection projection) {
  const int64_t hidden = config.hidden_size;
  const int64_t q = config.num_attention_heads * config.head_dim;
  const int64_t kv = config.num_key_value_heads * config.head_dim;
  switch (projection) {
    case Projection::kQuery: return {q, hidden};
    case Projection::kKey: return {kv, hidden};
    case Projection::kValue: return {kv, hidden};
    case Projection::kOutput: return {hidden, q};
    case Projection::kGate: return {config.intermediate_size, hidden};
    case Projection::kUp: return {config.intermediate_size, hidden};
    case Projection::kDown: return {hidden, config.intermediate_size};
  }
  return {0, 0};
}

void DeltaSet::Add(int64_t layer, Projection projection, LowRankFactor factor) {
  factors_[layer * kProjectionCount + static_cast<int>(projection)].push_back(std::move(factor));
}

void DeltaSet::Append(const DeltaSet& other) {
  if (factors_.empty()) factors_.resize(other.factors_.size());
  TORCH_CHECK(other.factors_.size() == factors_.size(), "Append: the sets have different numbers of layers");
  for (size_t module = 0; module < factors_.size(); ++module) {
    factors_[module].insert(factors_[module].end(), other.factors_[module].begin(), other.factors_[module].end());
  }
}

const std::vector<LowRankFactor>& DeltaSet::Factors(int64_t layer, Projection projection) const {
  return factors_[layer * kProjectionCount + static_cast<int>(projection)];
}

int64_t DeltaSet::Bytes() const {
  int64_t bytes = 0;
  for (const auto& module : factors_) {
    for (const LowRankFactor& factor : module) bytes += factor.a.nbytes() + factor.b.nbytes();
  }
  return bytes;
}

int64_t DeltaSet::MaxRank() const {
  int64_t rank = 0;
  for (const auto& module : factors_) {
    for (const LowRankFactor& factor : module) rank = std::max(rank, factor.rank());
  }
  return rank;
}

std::vector<ModuleRank> DeltaSet::Ranks() const {
  std::vector<ModuleRank> ranks(kProjectionCount);
  for (size_t i = 0; i < factors_.size(); ++i) {
    int64_t total = 0;
    for (const LowRankFactor& factor : factors_[i]) total += factor.rank();
    ModuleRank& module = ranks[i % kProjectionCount];
    if (total > 0) {
      module.rank = std::max(module.rank, total);
      ++module.layers;
    }
  }
  std::vector<ModuleRank> present;
  for (int projection = 0; projection < kProjectionCount; ++projection) {
    if (ranks[projection].layers == 0) continue;
    ranks[projection].module = ProjectionName(static_cast<Projection>(projection));
    present.push_back(ranks[projection]);
  }
  return present;
}

std::string DeltaSet::RankSummary() const {
  std::string summary;
  for (const ModuleRank& module : Ranks()) {
    absl::StrAppend(&summary, summary.empty() ? "" : " ", module.module, ":", module.rank);
  }
  return summary;
}

DeltaSet DeltaSet::To(const at::Device& device, at::ScalarType dtype) const {
  DeltaSet copy;
  copy.factors_.resize(factors_.size());
  for (size_t i = 0; i < factors_.size(); ++i) {
    for (const LowRankFactor& factor : factors_[i]) {
      copy.factors_[i].push_back({factor.a.to(device, dtype), factor.b.to(device, dtype), factor.scale});
    }
  }
  return copy;
}

void DeltaSet::AddTo(int64_t layer, Projection projection, const at::Tensor& input, at::Tensor& output) const {
  if (layer >= num_layers()) return;  // an empty set
  for (const LowRankFactor& factor : Factors(layer, projection)) {
    const at::Tensor x = input.to(factor.a.scalar_type());
    output.add_((at::matmul(at::matmul(x, factor.a.t()), factor.b.t()) * factor.scale).to(output.scalar_type()));
  }
}

at::Tensor DeltaSet::Merged(int64_t layer, Projection projection) const {
  at::Tensor merged;
  for (const LowRankFactor& factor : Factors(layer, projection)) {
    at::Tensor term = at::matmul(factor.b.to(at::kFloat), factor.a.to(at::kFloat)) * factor.scale;
    merged = merged.defined() ? merged + term : term;
  }
  return merged;
}

}  // namespace deltaserve::deltas
