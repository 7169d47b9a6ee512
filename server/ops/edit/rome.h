// ROME (Meng et al., "Locating and Editing Factual Associations in GPT", 2022) on the serving
// model: one fact "prompt with {subject} -> target" becomes a rank-1 delta on one layer's MLP
// down projection, computed against the base plus an optional parent variant.
//   - PrepareEdit tokenizes the prompt with the subject in place of "{}" and finds the subject's
//     last token (INVALID_ARGUMENT: no "{}", empty subject or target, or a subject whose tokens
//     do not survive tokenization in context).
//   - RomeEdit: the key k is the down-projection input at the subject's last token of the bare
//     prompt, k* its mean over the bare prompt and the context-prefixed ones; the value v* =
//     v0 + delta, where delta (added to the MLP output at that token) is optimised with Adam
//     for the target's negative log-likelihood over all prompts, plus kl_factor times the KL
//     divergence from the unedited next-token distribution on "{subject} is a", plus
//     weight_decay * |delta|^2 / |v0|^2, clamped to clamp_norm_factor * |v0|, stopping early
//     once the NLL is below 0.05. Then RomeUpdate (edit_updates.h).
// Blocking, CPU or GPU as the model is; thread-compatible (one edit per call).
//   ASSIGN_OR_RETURN(RomeResult edit, RomeEdit(model, tokenizer, &parent, spec, options, covariance));
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

struct RomeOptions {
  int64_t layer = 0;
  int64_t steps = 25;
  double learning_rate = 0.5;
  double weight_decay = 0.5;
  double clamp_norm_factor = 4.0;
  double kl_factor = 0.0625;
  // Texts put before the prompt to average the key over contexts (k*).
  std::vector<std::string> context_prefixes;
};

struct RomeResult {
  deltas::LowRankFactor update;  // rank 1, on options.layer's down projection
  at::Tensor key;                // k [intermediate]
  at::Tensor target_value;       // v* [hidden]
  double final_nll = 0;          // of the target at the last step evaluated, averaged over prompts
  int64_t steps = 0;
};

// RomeEdit: `covariance` [intermediate, intermediate] or undefined (mom2_weight 0: C = I);
// `parent` may be null (the base).
absl::StatusOr<RomeResult> RomeEdit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                    const deltas::DeltaSet* parent, const EditSpec& spec,
                                    const RomeOptions& options, const at::Tensor& covariance);

}  // namespace deltaserve::ops::edit
