// Edit: a whole knowledge edit of a parent variant (or the base), verified before anyone
// publishes it. The steps:
//   1. Measure every edit on the parent (EditEvaluation): its original answer (the parent's
//      greedy continuation, as many tokens as the target) and the neighbourhood's answers.
//   2. Apply the method: ROME (one rank-1 delta per edit, one after another, on one layer),
//      MEMIT or AlphaEdit (one batch over consecutive layers). Each value optimisation runs
//      until the target wins by a margin (subject_values.h), within its step budget.
//   3. Check every edit through the exact deltas that would be published (the parent's factors
//      followed by the edit's, cast to the model's dtype), with the serving model's forward
//      pass: efficacy (the greedy continuation is the target) and the target more likely than
//      the original answer.
//   4. Repair, within `repair_rounds`: the edits that do not hold are solved again against the
//      model as edited so far. ROME adds one more rank-1 delta per such edit; MEMIT/AlphaEdit
//      re-read the keys and residuals through the edited model and solve one more batch over
//      the layers for those edits, with the edits that hold kept where they are (residual 0).
//   5. Measure everything again on the final deltas: efficacy, the target against the original
//      answer, generalisation, locality (neighbourhood answers unchanged), fluency.
// An edit holds when it is effective, its target beats the original answer, and at least
// `min_locality` of its neighbourhood prompts keep their answers. Edit itself does not fail
// because edits do not hold: the caller decides from `holds` (publish, or fail with the
// report). Errors: INVALID_ARGUMENT for a bad spec or layer; CANCELLED (or any status) from
// `progress`. Blocking, CPU or GPU as the model is; no SQLite, registry or RPC.
//   ASSIGN_OR_RETURN(EditOutcome outcome, Edit(model, tokenizer, &parent, probes, options, progress));
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
#include "server/ops/edit/edit_evaluation.h"
#include "server/ops/edit/subject_values.h"
#include "server/ops/progress.h"

namespace deltaserve::ops::edit {

enum class EditMethod { kRome, kMemit, kAlphaEdit };

// ParseEditMethod: "rome", "memit" or "alphaedit"; INVALID_ARGUMENT naming them otherwise.
absl::StatusOr<EditMethod> ParseEditMethod(const std::string& name);
const char* EditMethodName(EditMethod method);

// DefaultMom2Weight: the weight of the key statistics a method uses by default: for MEMIT and
// AlphaEdit the base's intermediate size (lambda in (lambda C + K K^T), as the papers scale it),
// for ROME 1 (any positive value means "use C").
double DefaultMom2Weight(EditMethod method, const model::ModelConfig& config);

struct EditOptions {
  EditMethod method = EditMethod::kRome;
  std::vector<int64_t> layers;  // ROME: exactly one; MEMIT/AlphaEdit: ascending, consecutive
  ValueShiftOptions value;
  // lambda of MEMIT's solve; for ROME > 0 means "use the statistics" (C), 0 means C = I.
  double mom2_weight = 0;
  // Key statistics C = E[k k^T] per layer, as collected (no ridge); a layer missing = identity.
  std::map<int64_t, at::Tensor> covariances;
  std::vector<std::string> context_prefixes;
  double null_space_threshold = 0.1;  // AlphaEdit
  double alphaedit_l2 = 10;           // AlphaEdit
  // The facts earlier edits of the parent's lineage wrote: AlphaEdit keeps their keys' outputs.
  std::vector<EditSpec> earlier_edits;
  int64_t repair_rounds = 3;  // extra update rounds for edits that do not hold
  double min_locality = 0.75;  // fraction of an edit's neighbourhood prompts that must keep their answers
};

struct EditOutcome {
  // The parent's factors followed by every update of the edit, in the model's dtype and on its
  // device: exactly what was checked, and what to publish.
  deltas::DeltaSet deltas;
  std::vector<EditMeasures> before;  // per edit, on the parent
  std::vector<EditMeasures> after;   // per edit, on `deltas`
  std::vector<double> locality;      // per edit; -1 without neighbourhood prompts
  std::vector<bool> holds;           // per edit
  std::vector<ValueShift> values;    // per edit, its last value optimisation (no shift tensor)
  int64_t rounds = 0;                // update rounds applied: 1 + repairs
  int64_t Held() const;
};

absl::StatusOr<EditOutcome> Edit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                 const deltas::DeltaSet* parent, const std::vector<EditProbe>& probes,
                                 const EditOptions& options, const Progress& progress);

}  // namespace deltaserve::ops::edit
