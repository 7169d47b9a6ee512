// EditHook: the ProjectionDeltaHook that knowledge edits run the model through. It applies the
// parent variant's factors (so edits are computed against the model they will stack on), and at
// the MLP down projection of the layers it watches it records the keys (the projection's input
// rows) and the values (its output rows, parent included), and may add a shift to chosen rows of
// the output: ROME's and MEMIT's optimised value offset. It also records the attention output
// projection's rows of watched layers: with the values, what each layer adds to the residual. Differentiable; not thread-safe (one
// forward at a time), records kept until Clear.
//   EditHook hook(&parent);
//   hook.Watch(layer);
//   batch.deltas = &hook;  model.Forward(batch);
//   at::Tensor keys = hook.Keys(layer);   // [tokens, intermediate]
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include <ATen/ATen.h>

#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"

namespace deltaserve::ops::edit {

class EditHook : public model::ProjectionDeltaHook {
 public:
  explicit EditHook(const deltas::DeltaSet* parent) : parent_(parent) {}

  // Watch records the keys and values of `layer`'s down projection on every later forward.
  void Watch(int64_t layer) { records_[layer]; }
  // Shift adds `shift` [hidden] to rows `rows` of `layer`'s down-projection output.
  void Shift(int64_t layer, std::vector<int64_t> rows, at::Tensor shift);
  void ClearShift() { shift_ = {}; }
  // Keys and Values: the rows recorded at `layer` since the last Clear, concatenated
  // ([tokens, intermediate] and [tokens, hidden]); undefined before any forward.
  at::Tensor Keys(int64_t layer) const;
  at::Tensor Values(int64_t layer) const;
  // AttentionOutputs: the o_proj output rows recorded at `layer` ([tokens, hidden]).
  at::Tensor AttentionOutputs(int64_t layer) const;
  void Clear();

  void AddDelta(int64_t layer, model::Projection projection, const at::Tensor& input,
                at::Tensor& output) const override;

 private:
  struct Record {
    std::vector<at::Tensor> keys;
    std::vector<at::Tensor> values;
    std::vector<at::Tensor> attention;
  };
  struct ShiftSpec {
    int64_t layer = -1;
    std::vector<int64_t> rows;
    at::Tensor shift;
  };
  const deltas::DeltaSet* parent_;
  mutable std::map<int64_t, Record> records_;
  ShiftSpec shift_;
};

}  // namespace deltaserve::ops::edit
