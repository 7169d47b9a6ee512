// EditEvaluation: what an edit job reports about one state of the model (the parent before the
// edit, or the parent plus the edit after), per edit, CounterFact-style (ops/eval/edit_metrics.h):
//   - efficacy: teacher-forced on the edit's own prompt, every target token is the argmax;
//   - the target's and the original answer's log-probabilities (the original answer is the
//     parent's greedy continuation of the prompt, as many tokens as the target: "target more
//     probable than the original" is the papers' efficacy score);
//   - generalisation: the fraction of paraphrases (prompts with "{}" for the subject, or whole
//     prompts) on which efficacy holds;
//   - the greedy continuation of each neighbourhood prompt (locality compares before and after);
//   - fluency of a greedy generation from the prompt (weighted 2-/3-gram entropy).
// Runs the model through EditHook over `deltas` (null = the base), without a cache: for short
// evaluation texts. Blocking; throws c10::Error on misuse (callers use CatchTorchErrors).
//   ASSIGN_OR_RETURN(EditMeasures before, MeasureEdit(model, tokenizer, &parent, probe, {}));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer.h"
#include "server/ops/edit/subject_values.h"

namespace deltaserve::ops::edit {

struct EditProbe {
  EditSpec spec;
  std::vector<std::string> paraphrases;
  std::vector<std::string> neighborhood_prompts;
};

struct EditMeasures {
  bool efficacy = false;
  double target_log_prob = 0;
  std::vector<int64_t> original_answer;
  double original_log_prob = 0;
  double generalisation = -1;  // -1 without paraphrases
  std::vector<std::vector<int64_t>> neighborhood_continuations;
  double fluency = 0;
};

// ParaphraseSpec: how a paraphrase is measured: one with "{}" gets the edit's subject, one
// without is a whole prompt (its last token stands for the subject).
EditSpec ParaphraseSpec(const EditSpec& spec, const std::string& paraphrase);

// MeasureEfficacy: only efficacy and the two log-probabilities (target, original answer) of
// MeasureEdit, for checks between update rounds; `original_answer` as measured before.
absl::StatusOr<EditMeasures> MeasureEfficacy(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                             const deltas::DeltaSet* deltas, const EditSpec& spec,
                                             const std::vector<int64_t>& original_answer);

// MeasureEdit: `original_answer` empty = take the greedy continuation now (before the edit);
// after the edit, pass the one measured before.
absl::StatusOr<EditMeasures> MeasureEdit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                         const deltas::DeltaSet* deltas, const EditProbe& probe,
                                         const std::vector<int64_t>& original_answer);

// GreedyContinuation: `tokens` greedy next tokens after `prompt_ids` through `deltas`.
std::vector<int64_t> GreedyContinuation(const model::LlamaModel& model, const deltas::DeltaSet* deltas,
                                        std::vector<int64_t> prompt_ids, int64_t tokens);

}  // namespace deltaserve::ops::edit
