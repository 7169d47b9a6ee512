#include "server/ops/edit/subject_values.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/ops/edit/edit_hook.h"

namespace deltaserve::ops::edit {
namespace {

std::vector<int64_t> Widen(const std::vector<int32_t>& ids) { return std::vector<int64_t>(ids.begin(), ids.end()); }

int64_t Last(const PreparedEdit& edit) { return static_cast<int64_t>(edit.prompt_ids.size()) - 1; }


}  // namespace

at::Tensor EditForward(const model::LlamaModel& model, const std::vector<int64_t>& ids, std::vector<int64_t> rows,
                       const model::ProjectionDeltaHook& hook) {
  model::ForwardBatch batch;
  batch.token_ids = ids;
  batch.sequences.push_back({0, static_cast<int64_t>(ids.size()), nullptr});
  batch.logit_rows = std::move(rows);
  batch.deltas = &hook;
  return model.Forward(batch);
}

at::Tensor TargetLogits(const model::LlamaModel& model, const std::vector<int64_t>& prompt_ids,
                        const std::vector<int64_t>& target_ids, const model::ProjectionDeltaHook& hook) {
  std::vector<int64_t> ids = prompt_ids, rows;
  for (size_t i = 0; i < target_ids.size(); ++i) rows.push_back(static_cast<int64_t>(prompt_ids.size() + i) - 1);
  ids.insert(ids.end(), target_ids.begin(), target_ids.end());
  return EditForward(model, ids, std::move(rows), hook);
}

absl::Status CheckLayer(const model::ModelConfig& config, int64_t layer) {
  if (layer >= 0 && layer < config.num_hidden_layers) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range: the base model has ",
                                                 config.num_hidden_layers, " layers (0 to ",
                                                 config.num_hidden_layers - 1, ")"));
}

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

absl::StatusOr<EditPrompts> PrepareEditPrompts(const model::Tokenizer& tokenizer, const EditSpec& spec,
                                               const std::vector<std::string>& context_prefixes) {
  EditPrompts prompts;
  ASSIGN_OR_RETURN(prompts.prompts.emplace_back(), PrepareEdit(tokenizer, spec));
  for (const std::string& prefix : context_prefixes) {
    ASSIGN_OR_RETURN(prompts.prompts.emplace_back(), PrepareEdit(tokenizer, spec, prefix));
  }
  ASSIGN_OR_RETURN(prompts.essence, PrepareEdit(tokenizer, {"{} is a", spec.subject, spec.target}));
  return prompts;
}

absl::StatusOr<std::vector<std::string>> ContextPrefixes(const model::LlamaModel& model,
                                                         const model::Tokenizer& tokenizer,
                                                         const deltas::DeltaSet* parent, int64_t count,
                                                         int64_t tokens, uint64_t seed) {
  constexpr int64_t kTopK = 10;
  ASSIGN_OR_RETURN(std::vector<int32_t> start, tokenizer.EncodePrompt(""));
  std::mt19937_64 random(seed);
  std::vector<std::string> prefixes;
  EditHook hook(parent);
  at::NoGradGuard no_grad;
  for (int64_t i = 0; i < count; ++i) {
    std::vector<int64_t> ids(start.begin(), start.end());
    std::vector<int32_t> sampled;
    for (int64_t t = 0; t < tokens; ++t) {
      // Without a BOS (a tokenizer that adds none), sampling starts after token 0.
      if (ids.empty()) ids.push_back(0);
      const at::Tensor logits = EditForward(model, ids, {static_cast<int64_t>(ids.size()) - 1}, hook)[0];
      auto [values, indices] = at::topk(logits.to(at::kDouble), std::min<int64_t>(kTopK, logits.size(0)));
      const at::Tensor probabilities = at::softmax(values, 0).cpu();
      double draw = std::uniform_real_distribution<double>(0, 1)(random);
      int64_t pick = 0;
      for (; pick + 1 < probabilities.size(0); ++pick) {
        draw -= probabilities[pick].item<double>();
        if (draw <= 0) break;
      }
      const int64_t id = indices[pick].item<int64_t>();
      ids.push_back(id);
      sampled.push_back(static_cast<int32_t>(id));
    }
    prefixes.push_back(tokenizer.Decode(sampled) + ". ");
  }
  return prefixes;
}

SubjectKeys ReadSubjectKeys(const model::LlamaModel& model, const deltas::DeltaSet* parent, const EditPrompts& prompts,
                            int64_t layer) {
  at::NoGradGuard no_grad;
  EditHook hook(parent);
  hook.Watch(layer);
  SubjectKeys keys;
  at::Tensor sum;
  for (size_t i = 0; i < prompts.prompts.size(); ++i) {
    const PreparedEdit& prompt = prompts.prompts[i];
    hook.Clear();
    EditForward(model, prompt.prompt_ids, {Last(prompt)}, hook);
    const at::Tensor key = hook.Keys(layer)[prompt.subject_last].to(at::kDouble);
    sum = sum.defined() ? sum + key : key;
    if (i == 0) {
      keys.key = key;
      keys.value = hook.Values(layer)[prompt.subject_last].to(at::kDouble);
    }
  }
  keys.mean_key = sum / static_cast<double>(prompts.prompts.size());
  return keys;
}

ValueShift OptimiseValueShift(const model::LlamaModel& model, const deltas::DeltaSet* parent,
                              const EditPrompts& prompts, int64_t layer, double value_norm,
                              const ValueShiftOptions& options) {
  EditHook hook(parent);
  at::Tensor essence_log_probs;
  {
    at::NoGradGuard no_grad;
    essence_log_probs = at::log_softmax(EditForward(model, prompts.essence.prompt_ids, {Last(prompts.essence)}, hook), -1);
  }
  ValueShift result;
  at::Tensor shift = at::zeros({model.config().hidden_size}, at::kFloat).to(model.device()).requires_grad_(true);
  at::Tensor first = at::zeros_like(shift), second = at::zeros_like(shift);
  at::Tensor best;
  // Adam moves each coordinate by about the learning rate: in units of v0's RMS coordinate, so
  // that the same options suit models whose activations differ in scale.
  const double step_size = options.learning_rate * value_norm / std::sqrt(static_cast<double>(model.config().hidden_size));
  for (int64_t step = 1; step <= options.steps; ++step) {
    if (shift.grad().defined()) shift.mutable_grad().zero_();
    at::Tensor nll;
    double margin = std::numeric_limits<double>::infinity();
    for (const PreparedEdit& prompt : prompts.prompts) {
      hook.Shift(layer, {prompt.subject_last}, shift);
      const at::Tensor log_probs = at::log_softmax(TargetLogits(model, prompt.prompt_ids, prompt.target_ids, hook), -1);
      const at::Tensor targets = at::tensor(prompt.target_ids, at::kLong).to(log_probs.device()).unsqueeze(1);
      const at::Tensor target_log_probs = log_probs.gather(1, targets);
      // The NLL, plus a hinge on each token's margin over the runner-up: what the stop asks.
      const at::Tensor others = log_probs.scatter(1, targets, -std::numeric_limits<float>::infinity());
      const at::Tensor token_margins = target_log_probs.squeeze(1) - std::get<0>(others.max(1));
      const at::Tensor prompt_nll = -target_log_probs.mean() + at::relu(options.margin - token_margins).mean();
      nll = nll.defined() ? nll + prompt_nll : prompt_nll;
      margin = std::min(margin, token_margins.min().item<double>());
    }
    nll = nll / static_cast<double>(prompts.prompts.size());
    hook.Shift(layer, {prompts.essence.subject_last}, shift);
    const at::Tensor edited_essence =
        at::log_softmax(EditForward(model, prompts.essence.prompt_ids, {Last(prompts.essence)}, hook), -1);
    const at::Tensor kl = (essence_log_probs.exp() * (essence_log_probs - edited_essence)).sum();
    const at::Tensor decay = shift.pow(2).sum() / (value_norm * value_norm);
    result.steps = step;
    if (!best.defined() || margin > result.final_margin) {
      // The best shift so far: what is returned when the budget runs out first.
      result.final_nll = nll.item<double>();
      result.final_margin = margin;
      best = shift.detach().clone();
    }
    result.reached = margin >= options.margin;
    if (result.reached) break;
    const at::Tensor loss = nll + options.kl_factor * kl + options.weight_decay * decay;
    loss.backward();
    at::NoGradGuard no_grad;
    const at::Tensor gradient = shift.grad();
    first.mul_(0.9).add_(gradient, 0.1);
    second.mul_(0.999).addcmul_(gradient, gradient, 0.001);
    const double bias1 = 1 - std::pow(0.9, step), bias2 = 1 - std::pow(0.999, step);
    // The step decays linearly to a tenth over the budget, so that the shift settles.
    const double decayed = step_size * (1.0 - 0.9 * (step - 1) / std::max<int64_t>(options.steps - 1, 1));
    shift.addcdiv_(first, (second / bias2).sqrt_().add_(1e-8), -decayed / bias1);
    const double limit = options.clamp_norm_factor * value_norm;
    const double norm = shift.norm().item<double>();
    if (norm > limit) shift.mul_(limit / norm);
  }
  result.shift = best.to(at::kDouble);
  return result;
}

}  // namespace deltaserve::ops::edit
