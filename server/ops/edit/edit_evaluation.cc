#include "server/ops/edit/edit_evaluation.h"

#include <algorithm>

#include <c10/core/InferenceMode.h>

#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/ops/edit/edit_hook.h"
#include "server/ops/eval/edit_metrics.h"

namespace deltaserve::ops::edit {
namespace {

constexpr int64_t kFluencyTokens = 32;
constexpr int64_t kNeighborhoodTokens = 8;

// The log-probabilities of `answer` after `prompt_ids`, teacher-forced: [answer tokens, vocab].
at::Tensor AnswerLogProbs(const model::LlamaModel& model, const EditHook& hook, const std::vector<int64_t>& prompt_ids,
                          const std::vector<int64_t>& answer) {
  return at::log_softmax(TargetLogits(model, prompt_ids, answer, hook).to(at::kFloat), -1);
}

// MeasureTarget: efficacy (every target token the argmax), and the log-probabilities of the
// target and of `original_answer`, through `hook`'s deltas.
void MeasureTarget(const model::LlamaModel& model, const EditHook& hook, const PreparedEdit& edit,
                   std::vector<int64_t> original_answer, EditMeasures& measures) {
  const at::Tensor target = AnswerLogProbs(model, hook, edit.prompt_ids, edit.target_ids);
  measures.efficacy = eval::TargetIsArgmax(target, edit.target_ids);
  measures.target_log_prob = eval::SequenceLogProb(target, edit.target_ids);
  measures.original_answer = std::move(original_answer);
  measures.original_log_prob = eval::SequenceLogProb(
      AnswerLogProbs(model, hook, edit.prompt_ids, measures.original_answer), measures.original_answer);
}

}  // namespace

EditSpec ParaphraseSpec(const EditSpec& spec, const std::string& paraphrase) {
  if (paraphrase.find("{}") != std::string::npos) return {paraphrase, spec.subject, spec.target};
  return {"{}", paraphrase, spec.target};
}

std::vector<int64_t> GreedyContinuation(const model::LlamaModel& model, const deltas::DeltaSet* deltas,
                                        std::vector<int64_t> prompt_ids, int64_t tokens) {
  c10::InferenceMode inference;
  EditHook hook(deltas);
  std::vector<int64_t> continuation;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t last = static_cast<int64_t>(prompt_ids.size()) - 1;
    const int64_t next = EditForward(model, prompt_ids, {last}, hook)[0].argmax().item<int64_t>();
    continuation.push_back(next);
    prompt_ids.push_back(next);
  }
  return continuation;
}

absl::StatusOr<EditMeasures> MeasureEfficacy(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                             const deltas::DeltaSet* deltas, const EditSpec& spec,
                                             const std::vector<int64_t>& original_answer) {
  ASSIGN_OR_RETURN(PreparedEdit edit, PrepareEdit(tokenizer, spec));
  EditMeasures measures;
  RETURN_IF_ERROR(common::CatchTorchErrors("checking the edit", [&] {
    c10::InferenceMode inference;
    EditHook hook(deltas);
    MeasureTarget(model, hook, edit, original_answer, measures);
  }));
  return measures;
}

absl::StatusOr<EditMeasures> MeasureEdit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                         const deltas::DeltaSet* deltas, const EditProbe& probe,
                                         const std::vector<int64_t>& original_answer) {
  ASSIGN_OR_RETURN(PreparedEdit edit, PrepareEdit(tokenizer, probe.spec));
  std::vector<PreparedEdit> paraphrases;
  for (const std::string& paraphrase : probe.paraphrases) {
    ASSIGN_OR_RETURN(paraphrases.emplace_back(), PrepareEdit(tokenizer, ParaphraseSpec(probe.spec, paraphrase)));
  }
  std::vector<std::vector<int64_t>> neighbors;
  for (const std::string& prompt : probe.neighborhood_prompts) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.EncodePrompt(prompt));
    neighbors.emplace_back(ids.begin(), ids.end());
  }
  EditMeasures measures;
  RETURN_IF_ERROR(common::CatchTorchErrors("measuring the edit", [&] {
    c10::InferenceMode inference;
    EditHook hook(deltas);
    MeasureTarget(model, hook, edit,
                  original_answer.empty() ? GreedyContinuation(model, deltas, edit.prompt_ids, edit.target_ids.size())
                                          : original_answer,
                  measures);
    if (!paraphrases.empty()) {
      int hits = 0;
      for (const PreparedEdit& paraphrase : paraphrases) {
        hits += eval::TargetIsArgmax(AnswerLogProbs(model, hook, paraphrase.prompt_ids, paraphrase.target_ids),
                                     paraphrase.target_ids)
                    ? 1
                    : 0;
      }
      measures.generalisation = static_cast<double>(hits) / static_cast<double>(paraphrases.size());
    }
    const int64_t neighborhood_tokens = std::min<int64_t>(kNeighborhoodTokens, edit.target_ids.size());
    for (const std::vector<int64_t>& neighbor : neighbors) {
      measures.neighborhood_continuations.push_back(GreedyContinuation(model, deltas, neighbor, neighborhood_tokens));
    }
    measures.fluency = eval::Fluency(GreedyContinuation(model, deltas, edit.prompt_ids, kFluencyTokens));
  }));
  return measures;
}

}  // namespace deltaserve::ops::edit
