#include "server/ops/edit/edit_hook.h"

namespace deltaserve::ops::edit {

void EditHook::Shift(int64_t layer, std::vector<int64_t> rows, at::Tensor shift) {
  shift_ = {layer, std::move(rows), std::move(shift)};
}

at::Tensor EditHook::Keys(int64_t layer) const {
  auto found = records_.find(layer);
  return found == records_.end() || found->second.keys.empty() ? at::Tensor() : at::cat(found->second.keys, 0);
}

at::Tensor EditHook::Values(int64_t layer) const {
  auto found = records_.find(layer);
  return found == records_.end() || found->second.values.empty() ? at::Tensor() : at::cat(found->second.values, 0);
}

at::Tensor EditHook::AttentionOutputs(int64_t layer) const {
  auto found = records_.find(layer);
  return found == records_.end() || found->second.attention.empty() ? at::Tensor()
                                                                    : at::cat(found->second.attention, 0);
}

void EditHook::Clear() {
  for (auto& [layer, record] : records_) record = {};
}

void EditHook::AddDelta(int64_t layer, model::Projection projection, const at::Tensor& input,
                        at::Tensor& output) const {
  if (parent_ != nullptr) parent_->AddTo(layer, projection, input, output);
  auto found = records_.find(layer);
  if (projection == model::Projection::kOutput && found != records_.end()) found->second.attention.push_back(output);
  if (projection != model::Projection::kDown) return;
  if (shift_.layer == layer && shift_.shift.defined()) {
    for (int64_t row : shift_.rows) output[row].add_(shift_.shift.to(output.scalar_type()));
  }
  if (found != records_.end()) {
    found->second.keys.push_back(input);
    found->second.values.push_back(output);
  }
}

}  // namespace deltaserve::ops::edit
