// MEMIT (Meng et al., "Mass-Editing Memory in a Transformer", 2023) and AlphaEdit (Fang et al.,
// ICLR 2025) on the serving model: a batch of facts becomes low-rank deltas on the MLP down
// projections of a range of layers, computed against the base plus an optional parent variant.
//   1. For each edit, the residual shift delta_i wanted after the last edited layer, at the
//      subject's last token: OptimiseValueShift at that layer (subject_values.h), scaled (decay,
//      clamp, step size) by the norm of what the layers up to it add to the residual there.
//   2. For each layer l in order: the edits' keys K (k*, mean over the context prompts) under
//      the model as edited so far; what the layers up to the last one now add to the residual
//      there, compared with before any edit, H; R = (delta - H) / (layers still to edit); the
//      update MemitUpdate(C_l, K, R, mom2_weight), or with AlphaEdit
//      AlphaEditUpdate(P_l, K, R, K_previous, l2) where P_l projects onto the null space of
//      C_l; applied before the next layer's keys are read.
// Each layer's delta has rank <= the number of edits. Without a covariance for a layer, C = I
// (mom2_weight is then a ridge) and AlphaEdit preserves nothing (P = I). Blocking.
//   ASSIGN_OR_RETURN(MemitResult edit, MemitEdit(model, tokenizer, &parent, specs, options, covariances));
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer.h"
#include "server/ops/edit/subject_values.h"

namespace deltaserve::ops::edit {

struct MemitOptions {
  std::vector<int64_t> layers;  // ascending, consecutive
  ValueShiftOptions value;
  double mom2_weight = 1.5e4;
  std::vector<std::string> context_prefixes;
  // AlphaEdit instead of MEMIT's update: the null-space threshold (relative to C's largest
  // eigenvalue), its L2 weight, and the keys of earlier edits of the lineage per layer.
  bool alphaedit = false;
  double null_space_threshold = 0.1;
  double alphaedit_l2 = 10;
  std::map<int64_t, at::Tensor> previous_keys;  // layer -> [intermediate, m]
  // Edits whose current outputs are kept (no value optimisation, residual 0): a repair round
  // re-solves for the edits that do not hold yet while holding the others where they are.
  // Empty = none; else one entry per edit.
  std::vector<bool> keep;
};

struct MemitResult {
  deltas::DeltaSet deltas;              // the new factors only (not the parent's)
  std::vector<at::Tensor> shifts;       // delta_i [hidden], float64, per edit (zero when kept)
  std::vector<ValueShift> values;       // per edit, how its value optimisation ended (empty when kept)
  std::map<int64_t, at::Tensor> keys;   // layer -> the edits' keys K [intermediate, n], float64
};

// MemitEdit: `covariances` maps layers to C [intermediate, intermediate] (missing: identity).
// INVALID_ARGUMENT for no edits, no layers, layers out of range or not ascending, a bad spec, or
// `keep` of another length than the edits.
absl::StatusOr<MemitResult> MemitEdit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                      const deltas::DeltaSet* parent, const std::vector<EditSpec>& specs,
                                      const MemitOptions& options, const std::map<int64_t, at::Tensor>& covariances);

}  // namespace deltaserve::ops::edit
