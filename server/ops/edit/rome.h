// ROME (Meng et al., "Locating and Editing Factual Associations in GPT", 2022) on the serving
// model: one fact "prompt with {subject} -> target" becomes a rank-1 delta on one layer's MLP
// down projection, computed against the base plus an optional parent variant: the key k at the
// subject's last token of the bare prompt, k* its mean over the context-prefixed prompts too,
// v* = v0 + the optimised value shift (subject_values.h), then RomeUpdate (edit_updates.h).
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
#include "server/ops/edit/subject_values.h"

namespace deltaserve::ops::edit {

struct RomeOptions {
  int64_t layer = 0;
  ValueShiftOptions value;
  // Texts put before the prompt to average the key over contexts (k*).
  std::vector<std::string> context_prefixes;
};

struct RomeResult {
  deltas::LowRankFactor update;  // rank 1, on options.layer's down projection
  at::Tensor key;                // k [intermediate]
  at::Tensor target_value;       // v* [hidden]
  ValueShift value;              // how the value optimisation ended (shift, NLL, margin, steps)
};

// RomeEdit: `covariance` [intermediate, intermediate] or undefined (mom2_weight 0: C = I);
// `parent` may be null (the base).
absl::StatusOr<RomeResult> RomeEdit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                    const deltas::DeltaSet* parent, const EditSpec& spec,
                                    const RomeOptions& options, const at::Tensor& covariance);

}  // namespace deltaserve::ops::edit
