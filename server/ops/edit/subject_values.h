// What ROME and MEMIT compute per edit on the running model (base plus parent):
//   - PrepareEdit tokenizes the prompt with the subject in place of "{}" and finds the subject's
//     last token (INVALID_ARGUMENT: no "{}", empty subject or target, or a subject whose tokens
//     do not survive tokenization in context); PrepareEditPrompts adds the context-prefixed
//     prompts and the "{subject} is a" prompt of the KL term.
//   - ReadSubjectKeys: at one layer's down projection, the key at the subject's last token of
//     the bare prompt, its mean over all prompts (k*), and the current value there.
//   - ContextPrefixes: ROME's context templates: short texts sampled from the model itself
//     (seeded, so an edit is reproducible), each followed by ". ", to put before the prompt.
//   - OptimiseValueShift: the offset delta added to a layer's MLP output at the subject's last
//     token, optimised with Adam for the target's negative log-likelihood over all prompts, plus
//     kl_factor times the KL divergence from the unedited next-token distribution on the essence
//     prompt, plus weight_decay * |delta|^2 / |v0|^2; clamped to clamp_norm_factor * |v0|.
//     It runs within a step budget until the target wins by a margin on every prompt: each
//     target token (teacher-forced) beats every other token, the old answer's included, by
//     `margin` nats of log-probability. That slack is what lets the shift survive being
//     realised by a low-rank weight update (MEMIT spreads it over layers and regularises it).
// Blocking; they throw c10::Error on misuse (callers wrap them in CatchTorchErrors).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer.h"

namespace deltaserve::ops::edit {

struct EditSpec {
  std::string prompt;   // with "{}" where the subject goes
  std::string subject;
  std::string target;   // e.g. " Paris"
};

struct PreparedEdit {
  std::vector<int64_t> prompt_ids;  // with BOS where the model wants one
  int64_t subject_last = 0;         // index of the subject's last token in prompt_ids
  std::vector<int64_t> target_ids;
};

// PrepareEdit: `prefix` goes before the prompt (context prefixes).
absl::StatusOr<PreparedEdit> PrepareEdit(const model::Tokenizer& tokenizer, const EditSpec& spec,
                                         const std::string& prefix = "");

struct EditPrompts {
  std::vector<PreparedEdit> prompts;  // the bare prompt first, then the context-prefixed ones
  PreparedEdit essence;               // "{subject} is a"
};
absl::StatusOr<EditPrompts> PrepareEditPrompts(const model::Tokenizer& tokenizer, const EditSpec& spec,
                                               const std::vector<std::string>& context_prefixes);

struct SubjectKeys {
  at::Tensor key;       // k: the bare prompt's key [intermediate], float64
  at::Tensor mean_key;  // k*: the mean over all prompts
  at::Tensor value;     // v0: the down projection's output at the bare prompt's subject [hidden], float64
};
SubjectKeys ReadSubjectKeys(const model::LlamaModel& model, const deltas::DeltaSet* parent, const EditPrompts& prompts,
                            int64_t layer);

// ContextPrefixes: `count` texts of `tokens` sampled tokens each (temperature 1 over the 10 most
// likely), from BOS (or the empty prompt) through the base plus `parent`.
absl::StatusOr<std::vector<std::string>> ContextPrefixes(const model::LlamaModel& model,
                                                         const model::Tokenizer& tokenizer,
                                                         const deltas::DeltaSet* parent, int64_t count,
                                                         int64_t tokens, uint64_t seed);

struct ValueShiftOptions {
  int64_t steps = 200;  // the budget: it stops as soon as the margin is reached
  // Adam's step, in units of v0's RMS coordinate (|v0| / sqrt(hidden)), so that one setting
  // suits models whose activations differ in scale.
  double learning_rate = 0.2;
  double weight_decay = 0.05;
  double clamp_norm_factor = 10.0;
  double kl_factor = 0.0625;
  double margin = 2.0;  // nats: every target token's log-probability over the runner-up's
};

struct ValueShift {
  at::Tensor shift;  // [hidden], float64
  double final_nll = 0;  // of the target at the last step evaluated, averaged over prompts
  double final_margin = 0;  // the smallest target-token margin over the runner-up then
  bool reached = false;     // final_margin >= options.margin
  int64_t steps = 0;
};
// OptimiseValueShift: `value_norm` is |v0| (the scale of the decay and the clamp).
ValueShift OptimiseValueShift(const model::LlamaModel& model, const deltas::DeltaSet* parent,
                              const EditPrompts& prompts, int64_t layer, double value_norm,
                              const ValueShiftOptions& options);

// CheckLayer: INVALID_ARGUMENT naming the range when `layer` is not one of the model's.
absl::Status CheckLayer(const model::ModelConfig& config, int64_t layer);

// Logits of `rows` for `ids` run as one sequence through `hook` (without a cache).
at::Tensor EditForward(const model::LlamaModel& model, const std::vector<int64_t>& ids, std::vector<int64_t> rows,
                       const model::ProjectionDeltaHook& hook);
// TargetLogits: teacher-forced, the logits of the rows that predict each of `target_ids` after
// `prompt_ids` ([target tokens, vocab]), through `hook`.
at::Tensor TargetLogits(const model::LlamaModel& model, const std::vector<int64_t>& prompt_ids,
                        const std::vector<int64_t>& target_ids, const model::ProjectionDeltaHook& hook);

}  // namespace deltaserve::ops::edit
