#include "server/ops/edit/memit.h"

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/ops/edit/edit_hook.h"
#include "server/ops/edit/edit_updates.h"

namespace deltaserve::ops::edit {
namespace {

// ResidualAdded: what layers 0..last add to the residual at the bare prompt's subject token
// (attention and MLP outputs summed), under `deltas`.
at::Tensor ResidualAdded(const model::LlamaModel& model, const deltas::DeltaSet& deltas, const PreparedEdit& prompt,
                         int64_t last) {
  at::NoGradGuard no_grad;
  EditHook hook(&deltas);
  for (int64_t layer = 0; layer <= last; ++layer) hook.Watch(layer);
  EditForward(model, prompt.prompt_ids, {static_cast<int64_t>(prompt.prompt_ids.size()) - 1}, hook);
  at::Tensor added;
  for (int64_t layer = 0; layer <= last; ++layer) {
    const at::Tensor row = (hook.AttentionOutputs(layer)[prompt.subject_last] + hook.Values(layer)[prompt.subject_last])
                               .to(at::kDouble);
    added = added.defined() ? added + row : row;
  }
  return added;
}

}  // namespace

absl::StatusOr<MemitResult> MemitEdit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                      const deltas::DeltaSet* parent, const std::vector<EditSpec>& specs,
                                      const MemitOptions& options, const std::map<int64_t, at::Tensor>& covariances) {
  const model::ModelConfig& config = model.config();
  if (specs.empty()) return absl::InvalidArgumentError("no edits");
  if (options.layers.empty()) return absl::InvalidArgumentError("no layers to edit");
  if (!options.keep.empty() && options.keep.size() != specs.size()) {
    return absl::InvalidArgumentError("keep needs one entry per edit");
  }
  for (size_t i = 0; i < options.layers.size(); ++i) {
    RETURN_IF_ERROR(CheckLayer(config, options.layers[i]));
    if (i > 0 && options.layers[i] <= options.layers[i - 1]) {
      return absl::InvalidArgumentError("the layers to edit must be given in ascending order, each once");
    }
  }
  std::vector<EditPrompts> prompts;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto prepared = PrepareEditPrompts(tokenizer, specs[i], options.context_prefixes);
    if (!prepared.ok()) {
      return absl::Status(prepared.status().code(), absl::StrCat("edit ", i + 1, ": ", prepared.status().message()));
    }
    prompts.push_back(std::move(*prepared));
  }
  const int64_t last = options.layers.back();
  const int64_t in = config.intermediate_size;
  MemitResult result;
  result.deltas = deltas::DeltaSet(config.num_hidden_layers);
  deltas::DeltaSet current = parent != nullptr ? *parent : deltas::DeltaSet(config.num_hidden_layers);
  absl::Status failed;
  RETURN_IF_ERROR(common::CatchTorchErrors("the MEMIT edit", [&] {
    // 1. The residual shift each edit wants after the last layer.
    std::vector<at::Tensor> before;
    // As in MEMIT, the shift's scale (decay, clamp, step size) is that of the residual there
    // (what the layers have added to it), not of one MLP's output.
    for (size_t i = 0; i < prompts.size(); ++i) {
      before.push_back(ResidualAdded(model, current, prompts[i].prompts[0], last));
      if (!options.keep.empty() && options.keep[i]) {
        result.shifts.push_back(at::zeros_like(before.back()));
        result.values.emplace_back();
        continue;
      }
      ValueShift shift =
          OptimiseValueShift(model, &current, prompts[i], last, before.back().norm().item<double>(), options.value);
      result.shifts.push_back(shift.shift);
      result.values.push_back(shift);
    }
    // 2. The layers in order, each update in place before the next layer's keys.
    for (size_t j = 0; j < options.layers.size() && failed.ok(); ++j) {
      const int64_t layer = options.layers[j];
      std::vector<at::Tensor> keys, residuals;
      for (size_t i = 0; i < prompts.size(); ++i) {
        keys.push_back(ReadSubjectKeys(model, &current, prompts[i], layer).mean_key);
        // Before the first update the model is as in step 1: nothing added yet.
        const at::Tensor added =
            j == 0 ? at::zeros_like(before[i]) : ResidualAdded(model, current, prompts[i].prompts[0], last) - before[i];
        const at::Tensor missing = result.shifts[i] - added;
        residuals.push_back(missing / static_cast<double>(options.layers.size() - j));
      }
      const at::Tensor k = at::stack(keys, 1), r = at::stack(residuals, 1);
      auto found = covariances.find(layer);
      const at::Tensor c = found != covariances.end() ? found->second : at::eye(in, at::kDouble);
      absl::StatusOr<deltas::LowRankFactor> update;
      if (options.alphaedit) {
        absl::StatusOr<at::Tensor> projector = found != covariances.end()
                                                   ? NullSpaceProjector(c, options.null_space_threshold)
                                                   : absl::StatusOr<at::Tensor>(at::eye(in, at::kDouble));
        auto previous = options.previous_keys.find(layer);
        update = projector.ok() ? AlphaEditUpdate(*projector, k, r,
                                                  previous == options.previous_keys.end() ? at::Tensor() : previous->second,
                                                  options.alphaedit_l2)
                                : absl::StatusOr<deltas::LowRankFactor>(projector.status());
      } else {
        update = MemitUpdate(c, k, r, options.mom2_weight);
      }
      if (!update.ok()) {
        failed = absl::Status(update.status().code(), absl::StrCat("layer ", layer, ": ", update.status().message()));
        break;
      }
      current.Add(layer, model::Projection::kDown, *update);
      result.deltas.Add(layer, model::Projection::kDown, *update);
      result.keys[layer] = k;
    }
  }));
  RETURN_IF_ERROR(failed);
  return result;
}

}  // namespace deltaserve::ops::edit
