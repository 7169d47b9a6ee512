#include "server/ops/edit/rome.h"

#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/ops/edit/edit_updates.h"

namespace deltaserve::ops::edit {

absl::StatusOr<RomeResult> RomeEdit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                    const deltas::DeltaSet* parent, const EditSpec& spec,
                                    const RomeOptions& options, const at::Tensor& covariance) {
  RETURN_IF_ERROR(CheckLayer(model.config(), options.layer));
  ASSIGN_OR_RETURN(EditPrompts prompts, PrepareEditPrompts(tokenizer, spec, options.context_prefixes));
  RomeResult result;
  SubjectKeys keys;
  RETURN_IF_ERROR(common::CatchTorchErrors("the ROME edit", [&] {
    keys = ReadSubjectKeys(model, parent, prompts, options.layer);
    ValueShift shift =
        OptimiseValueShift(model, parent, prompts, options.layer, keys.value.norm().item<double>(), options.value);
    result.key = keys.key;
    result.target_value = keys.value + shift.shift;
    result.value = shift;
  }));
  ASSIGN_OR_RETURN(result.update, RomeUpdate(covariance, keys.mean_key, keys.key, keys.value, result.target_value));
  return result;
}

}  // namespace deltaserve::ops::edit
