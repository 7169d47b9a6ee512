#include "server/ops/edit/rome.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/ops/edit/edit_hook.h"
#include "server/ops/edit/edit_updates.h"

namespace deltaserve::ops::edit {
namespace {

std::vector<int64_t> Widen(const std::vector<int32_t>& ids) { return std::vector<int64_t>(ids.begin(), ids.end()); }

// Forward runs `ids` as one sequence without a cache and returns the logits of `rows`.
at::Tensor Forward(const model::LlamaModel& model, const std::vector<int64_t>& ids, std::vector<int64_t> rows,
                   const EditHook& hook) {
  model::ForwardBatch batch;
  batch.token_ids = ids;
  batch.sequences.push_back({0, static_cast<int64_t>(ids.size()), nullptr});
  batch.logit_rows = std::move(rows);
  batch.deltas = &hook;
  return model.Forward(batch);
}

// The rows whose logits predict the target tokens of a prompt + target sequence.
std::vector<int64_t> TargetRows(const PreparedEdit& edit) {
  std::vector<int64_t> rows;
  for (size_t i = 0; i < edit.target_ids.size(); ++i) rows.push_back(static_cast<int64_t>(edit.prompt_ids.size() + i) - 1);
  return rows;
}

std::vector<int64_t> WithTarget(const PreparedEdit& edit) {
  std::vector<int64_t> ids = edit.prompt_ids;
  ids.insert(ids.end(), edit.target_ids.begin(), edit.target_ids.end());
  return ids;
}

}  // namespace

absl::StatusOr<PreparedEdit> PrepareEdit(const model::Tokenizer& tokenizer, const EditSpec& spec,
                                         const std::string& prefix) {
  const size_t slot = spec.prompt.find("{}");
  if (slot == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt \"", spec.prompt, "\" has no \"{}\" to put the subject in, e.g. \"The capital of {} is\""));
  }
  if (spec.subject.empty()) return absl::InvalidArgumentError("the subject is empty");
  if (spec.target.empty()) return absl::InvalidArgumentError("the target is empty");
  const std::string before = prefix + spec.prompt.substr(0, slot);
  const std::string filled = before + spec.subject + spec.prompt.substr(slot + 2);
  ASSIGN_OR_RETURN(std::vector<int32_t> through_subject, tokenizer.EncodePrompt(before + spec.subject));
  ASSIGN_OR_RETURN(std::vector<int32_t> without_subject, tokenizer.EncodePrompt(before));
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, tokenizer.EncodePrompt(filled));
  ASSIGN_OR_RETURN(std::vector<int32_t> target, tokenizer.Encode(spec.target));
  if (target.empty()) return absl::InvalidArgumentError("the target has no tokens");
  // The subject must keep its own tokens inside the prompt.
  const bool found = through_subject.size() > without_subject.size() && prompt.size() >= through_subject.size() &&
                     std::equal(through_subject.begin(), through_subject.end(), prompt.begin());
  if (!found) {
    return absl::InvalidArgumentError(absl::StrCat("subject \"", spec.subject, "\" is not found in the tokenised prompt \"",
                                                   filled, "\": its tokens merge with the text around it"));
  }
  PreparedEdit edit;
  edit.prompt_ids = Widen(prompt);
  edit.subject_last = static_cast<int64_t>(through_subject.size()) - 1;
  edit.target_ids = Widen(target);
  return edit;
}

absl::StatusOr<RomeResult> RomeEdit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                    const deltas::DeltaSet* parent, const EditSpec& spec,
                                    const RomeOptions& options, const at::Tensor& covariance) {
  const model::ModelConfig& config = model.config();
  if (options.layer < 0 || options.layer >= config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", options.layer, " is out of range: the base model has ",
                                                   config.num_hidden_layers, " layers (0 to ",
                                                   config.num_hidden_layers - 1, ")"));
  }
  std::vector<PreparedEdit> prompts;
  ASSIGN_OR_RETURN(prompts.emplace_back(), PrepareEdit(tokenizer, spec));
  for (const std::string& prefix : options.context_prefixes) {
    ASSIGN_OR_RETURN(prompts.emplace_back(), PrepareEdit(tokenizer, spec, prefix));
  }
  ASSIGN_OR_RETURN(PreparedEdit essence, PrepareEdit(tokenizer, {"{} is a", spec.subject, spec.target}));

  RomeResult result;
  at::Tensor mean_key, value;  // k* and v0
  absl::Status status = common::CatchTorchErrors("the ROME edit", [&] {
    EditHook hook(parent);
    hook.Watch(options.layer);
    // Keys and the current value, without gradients.
    at::Tensor key, key_sum, essence_log_probs;
    {
      at::NoGradGuard no_grad;
      for (size_t i = 0; i < prompts.size(); ++i) {
        hook.Clear();
        Forward(model, prompts[i].prompt_ids, {static_cast<int64_t>(prompts[i].prompt_ids.size()) - 1}, hook);
        const at::Tensor k = hook.Keys(options.layer)[prompts[i].subject_last].to(at::kDouble);
        key_sum = key_sum.defined() ? key_sum + k : k;
        if (i == 0) {
          key = k;
          value = hook.Values(options.layer)[prompts[i].subject_last].to(at::kDouble);
        }
      }
      hook.Clear();
      essence_log_probs = at::log_softmax(
          Forward(model, essence.prompt_ids, {static_cast<int64_t>(essence.prompt_ids.size()) - 1}, hook), -1);
    }
    mean_key = key_sum / static_cast<double>(prompts.size());

    // The value offset, by Adam.
    const double value_norm = value.norm().item<double>();
    at::Tensor shift = at::zeros({config.hidden_size}, at::kFloat).to(model.device()).requires_grad_(true);
    at::Tensor first = at::zeros_like(shift), second = at::zeros_like(shift);
    for (int64_t step = 1; step <= options.steps; ++step) {
      if (shift.grad().defined()) shift.mutable_grad().zero_();
      at::Tensor nll;
      for (const PreparedEdit& prompt : prompts) {
        hook.Clear();
        hook.Shift(options.layer, {prompt.subject_last}, shift);
        const at::Tensor log_probs = at::log_softmax(Forward(model, WithTarget(prompt), TargetRows(prompt), hook), -1);
        const at::Tensor targets = at::tensor(prompt.target_ids, at::kLong).to(log_probs.device());
        const at::Tensor prompt_nll = -log_probs.gather(1, targets.unsqueeze(1)).mean();
        nll = nll.defined() ? nll + prompt_nll : prompt_nll;
      }
      nll = nll / static_cast<double>(prompts.size());
      hook.Clear();
      hook.Shift(options.layer, {essence.subject_last}, shift);
      const at::Tensor edited_essence = at::log_softmax(
          Forward(model, essence.prompt_ids, {static_cast<int64_t>(essence.prompt_ids.size()) - 1}, hook), -1);
      const at::Tensor kl = (essence_log_probs.exp() * (essence_log_probs - edited_essence)).sum();
      const at::Tensor decay = shift.pow(2).sum() / (value_norm * value_norm);
      result.final_nll = nll.item<double>();
      result.steps = step;
      if (result.final_nll < 0.05) break;
      const at::Tensor loss = nll + options.kl_factor * kl + options.weight_decay * decay;
      loss.backward();
      at::NoGradGuard no_grad;
      const at::Tensor gradient = shift.grad();
      first.mul_(0.9).add_(gradient, 0.1);
      second.mul_(0.999).addcmul_(gradient, gradient, 0.001);
      const double bias1 = 1 - std::pow(0.9, step), bias2 = 1 - std::pow(0.999, step);
      shift.addcdiv_(first, (second / bias2).sqrt_().add_(1e-8), -options.learning_rate / bias1);
      const double limit = options.clamp_norm_factor * value_norm;
      const double norm = shift.norm().item<double>();
      if (norm > limit) shift.mul_(limit / norm);
    }
    hook.ClearShift();
    result.key = key;
    result.target_value = value + shift.detach().to(at::kDouble);
  });
  RETURN_IF_ERROR(status);
  ASSIGN_OR_RETURN(result.update, RomeUpdate(covariance, mean_key, result.key, value, result.target_value));
  return result;
}

}  // namespace deltaserve::ops::edit
