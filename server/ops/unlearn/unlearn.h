// Unlearn: goal-directed unlearning of a target variant (or the base), as a plain function. It
// trains a new LoRA delta on top of the target so that the model forgets the forget rows while
// keeping the retain rows: loss = forget_weight * L_forget + retain_weight * L_retain, with
//   - grad_ascent: L_forget = -NLL(forget), no retain term;
//   - grad_diff:   the same plus the retain term;
//   - npo:         L_forget = NpoLoss against the target's own sequence log-probabilities;
//   - simnpo:      L_forget = SimNpoLoss (reference-free);
// and L_retain the retain rows' NLL, or (retain_loss kl) the KL divergence from the target's
// next-token distributions on them.
// Every `eval_every` steps it measures recall (greedy, as served): each forget and retain row is
// probed by prompt -> true continuation (a prompt/completion row: its prompt and completion; a
// plain row: its text up to each of its last 8 word boundaries and the rest, leaving out
// prompts other rows of the data begin with too, such as a template's opening, and prompts
// that leave a single word after an earlier probe of the row), scored by exact reproduction
// (metric exact) or ROUGE-L F1 (metric rouge_l), averaged over probes and rows. The forget
// goal: forget recall <= goal.forget_max. The retain floor: retain recall >= goal.retain_floor
// times the target's. It stops as soon as a checkpoint meets both; once one meets the forget
// goal, it stops after 4 evaluations without a better one (the retain term may recover). The result is the evaluated checkpoint that meets the forget
// goal with the best retain recall (goal_met says whether it also meets the floor); with none
// meeting the forget goal, the last state (goal_met false). The caller decides whether to
// publish. It also reports MUSE-style measures before and after (losses, verbatim and
// knowledge ROUGE-L, Min-K% membership AUC against holdout rows) and the trajectory.
// Errors: INVALID_ARGUMENT for bad options or rows; any status from `progress`. Blocking; no
// SQLite, registry or RPC.
//   ASSIGN_OR_RETURN(UnlearnOutcome done, Unlearn(model, tokenizer, &target, forget, retain, {}, options, progress));
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer.h"
#include "server/ops/progress.h"
#include "server/ops/train/lora_trainer.h"

namespace deltaserve::ops::unlearn {

enum class UnlearnMethod { kGradAscent, kGradDiff, kNpo, kSimNpo };
enum class RetainLoss { kNll, kKl };
enum class RecallMetric { kExact, kRougeL };

// Parse*: INVALID_ARGUMENT naming the known names otherwise.
absl::StatusOr<UnlearnMethod> ParseUnlearnMethod(const std::string& name);
absl::StatusOr<RetainLoss> ParseRetainLoss(const std::string& name);
absl::StatusOr<RecallMetric> ParseRecallMetric(const std::string& name);
const char* UnlearnMethodName(UnlearnMethod method);
const char* RetainLossName(RetainLoss loss);
const char* RecallMetricName(RecallMetric metric);

struct UnlearnGoal {
  RecallMetric metric = RecallMetric::kExact;
  double forget_max = 0.0;    // forget recall at or below this
  double retain_floor = 0.9;  // retain recall at least this fraction of the target's
};

// The method's default learning rate and beta: SimNPO's length-normalised loss moves more slowly
// than NPO's at one rate (0.01 against 0.005 for the others); beta is the papers' (NPO 0.1,
// SimNPO 4.5; unused by the gradient methods).
double DefaultLearningRate(UnlearnMethod method);
double DefaultBeta(UnlearnMethod method);

// The defaults (npo, learning rate 0.005, budget 200, retain_weight 3, evaluations every 5
// steps) forget every forget fact and keep every retain fact of the three fact sets of
// tests/unit/ops/unlearn_scenarios_test.cc on the tiny and small demo models. A caller that
// picks another method sets its DefaultLearningRate and DefaultBeta.
struct UnlearnOptions {
  UnlearnOptions() {
    trainer.learning_rate = 0.005;
    trainer.total_steps = 200;
  }
  UnlearnMethod method = UnlearnMethod::kNpo;
  train::LoraTrainerOptions trainer;  // total_steps: the step budget
  int64_t batch_size = 8;
  int64_t micro_batch_size = 0;  // 0 = batch_size
  double forget_weight = 1.0;
  double retain_weight = 3.0;
  double beta = 0.1;   // npo 0.1, simnpo 4.5 are the papers'
  double delta = 0.0;  // simnpo
  RetainLoss retain_loss = RetainLoss::kNll;
  int64_t eval_every = 5;
  UnlearnGoal goal;
};

struct Recall {
  double forget_exact = 0, forget_rouge_l = 0;
  std::optional<double> retain_exact, retain_rouge_l;  // without retain rows: none
};

struct UnlearnMeasures {
  double forget_loss = 0;
  std::optional<double> retain_loss;
  std::optional<double> verbatim_rouge_l;   // plain forget rows: first half -> second half
  std::optional<double> knowledge_rouge_l;  // prompt/completion forget rows
  std::optional<double> min_k_auc;          // with holdout rows
  Recall recall;
};

struct Checkpoint {
  int64_t step = 0;  // 0 = the target itself
  Recall recall;
  bool forget_met = false, retain_met = false;
};

struct UnlearnOutcome {
  deltas::DeltaSet deltas;  // the target's factors followed by the chosen checkpoint's (float32)
  int64_t chosen_step = 0;
  bool forget_met = false;  // the chosen checkpoint meets the forget goal
  bool goal_met = false;    // ... and the retain floor
  UnlearnMeasures before, after;  // after: of the chosen checkpoint
  std::vector<Checkpoint> trajectory;  // every evaluation, the target's first
  std::vector<double> losses;          // per step run
  int64_t trained_tokens = 0;
  double seconds = 0;
};

absl::StatusOr<UnlearnOutcome> Unlearn(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                       const deltas::DeltaSet* target,
                                       const std::vector<train::TrainingExample>& forget,
                                       const std::vector<train::TrainingExample>& retain,
                                       const std::vector<train::TrainingExample>& holdout,
                                       const UnlearnOptions& options, const Progress& progress);

}  // namespace deltaserve::ops::unlearn
