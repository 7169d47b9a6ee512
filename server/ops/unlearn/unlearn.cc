#include "server/ops/unlearn/unlearn.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/ops/eval/membership.h"
#include "server/ops/eval/rouge.h"
#include "server/ops/train/finetune.h"
#include "server/ops/unlearn/unlearn_losses.h"

namespace deltaserve::ops::unlearn {
namespace {

using train::TrainingExample;

// After the forget goal is met without the retain floor: how many evaluations may pass without a
// better checkpoint (one that meets the forget goal with a higher retain recall) before it stops.
constexpr int kRecoveryEvaluations = 4;

// At most this many recall probes per plain row (the word boundaries nearest its end).
constexpr size_t kMaxProbesPerRow = 8;

// A recall probe: a prompt, and the text that a model which remembers the row continues it
// with (without trailing punctuation), and that text's length in tokens.
struct Probe {
  std::vector<int64_t> prompt;
  std::string truth;
  int64_t tokens = 0;
};

std::string WithoutTrailingPunctuation(std::string text) {
  while (!text.empty() && (std::ispunct(static_cast<unsigned char>(text.back())) ||
                           std::isspace(static_cast<unsigned char>(text.back())))) {
    text.pop_back();
  }
  return text;
}

// PlainText: a plain row's text without its beginning-of-sequence tokens.
std::string PlainText(const model::Tokenizer& tokenizer, const TrainingExample& example, size_t bos) {
  const std::vector<int64_t>& ids = example.token_ids;
  return tokenizer.Decode(std::vector<int32_t>(ids.begin() + std::min(bos, ids.size()), ids.end()));
}

// RowProbes: a prompt/completion row's prompt -> completion; a plain row's text up to each of
// its last word boundaries (at most kMaxProbesPerRow, none before the second word) -> the rest.
// A plain row's probe must identify the row: a prompt that other rows of the data (`others`,
// forget and retain alike) also begin with, such as a template's shared opening, asks which
// row the model prefers, not whether it remembers this one, and is left out. So is a probe that
// leaves a single word to recall after an earlier probe of the row: one word guessed from nearly
// the whole row is often right by chance (the last digit of a code, one time in ten).
std::vector<Probe> RowProbes(const model::Tokenizer& tokenizer, const TrainingExample& example, size_t bos,
                             const std::vector<std::string>& others) {
  const std::vector<int64_t>& ids = example.token_ids;
  std::vector<Probe> probes;
  auto add = [&](std::vector<int64_t> prompt, const std::string& rest) {
    Probe probe{std::move(prompt), WithoutTrailingPunctuation(rest)};
    absl::StatusOr<std::vector<int32_t>> truth = tokenizer.Encode(probe.truth);
    if (probe.prompt.empty() || probe.truth.empty() || !truth.ok() || truth->empty()) return;
    probe.tokens = static_cast<int64_t>(truth->size());
    probes.push_back(std::move(probe));
  };
  if (example.from_prompt_completion) {
    const size_t split = ids.size() - train::TargetCount(example);
    add({ids.begin(), ids.begin() + split},
        tokenizer.Decode(std::vector<int32_t>(ids.begin() + split, ids.end())));
    return probes;
  }
  const std::string text = PlainText(tokenizer, example, bos);
  auto shared = [&](size_t at) {  // another row begins with text[0, at] followed by a space
    int count = 0;
    for (const std::string& other : others) count += other.compare(0, at + 1, text, 0, at + 1) == 0 ? 1 : 0;
    return count > 1;  // `others` holds this row too
  };
  std::vector<size_t> boundaries;
  const size_t first_word_end = text.find(' ', text.find_first_not_of(' '));
  for (size_t at = text.find(' ', first_word_end == std::string::npos ? text.size() : first_word_end + 1);
       at != std::string::npos; at = text.find(' ', at + 1)) {
    const bool one_word_left = WithoutTrailingPunctuation(text.substr(at + 1)).find(' ') == std::string::npos;
    if (!shared(at) && (boundaries.empty() || !one_word_left)) boundaries.push_back(at);
  }
  if (boundaries.size() > kMaxProbesPerRow) boundaries.erase(boundaries.begin(), boundaries.end() - kMaxProbesPerRow);
  for (size_t at : boundaries) {
    absl::StatusOr<std::vector<int32_t>> prompt = tokenizer.EncodePrompt(text.substr(0, at));
    if (prompt.ok()) add({prompt->begin(), prompt->end()}, text.substr(at));
  }
  return probes;
}

struct SetRecall {
  double exact = 0, rouge_l = 0;
};

// MeasureRecall: per row, the share of its probes whose greedy continuation begins with the
// truth (exact) and their mean ROUGE-L F1 against it; averaged over rows.
absl::StatusOr<SetRecall> MeasureRecall(const train::LoraTrainer& trainer, const model::Tokenizer& tokenizer,
                                        const std::vector<std::vector<Probe>>& rows) {
  SetRecall recall;
  for (const std::vector<Probe>& probes : rows) {
    double exact = 0, rouge = 0;
    for (const Probe& probe : probes) {
      ASSIGN_OR_RETURN(std::vector<int64_t> continuation, trainer.GreedyContinuation(probe.prompt, probe.tokens + 1));
      const std::string text = tokenizer.Decode(std::vector<int32_t>(continuation.begin(), continuation.end()));
      exact += text.compare(0, probe.truth.size(), probe.truth) == 0 ? 1 : 0;
      rouge += eval::RougeLF1(text.substr(0, probe.truth.size() + 1), probe.truth);
    }
    recall.exact += exact / std::max<size_t>(probes.size(), 1);
    recall.rouge_l += rouge / std::max<size_t>(probes.size(), 1);
  }
  recall.exact /= std::max<size_t>(rows.size(), 1);
  recall.rouge_l /= std::max<size_t>(rows.size(), 1);
  return recall;
}

double Value(const Recall& recall, RecallMetric metric, bool forget) {
  if (forget) return metric == RecallMetric::kExact ? recall.forget_exact : recall.forget_rouge_l;
  return metric == RecallMetric::kExact ? recall.retain_exact.value_or(0) : recall.retain_rouge_l.value_or(0);
}

// Measurer: the recall probes and the MUSE-style measures of one trainer state.
class Measurer {
 public:
  Measurer(const model::Tokenizer& tokenizer, const std::vector<TrainingExample>& forget,
           const std::vector<TrainingExample>& retain, const std::vector<TrainingExample>& holdout)
      : tokenizer_(tokenizer), forget_(forget), retain_(retain), holdout_(holdout) {
    const absl::StatusOr<std::vector<int32_t>> empty = tokenizer.EncodePrompt("");
    const size_t bos = empty.ok() ? empty->size() : 0;
    std::vector<std::string> texts;
    for (const auto* set : {&forget, &retain}) {
      for (const TrainingExample& example : *set) {
        if (!example.from_prompt_completion) texts.push_back(PlainText(tokenizer, example, bos));
      }
    }
    for (const TrainingExample& example : forget) forget_probes_.push_back(RowProbes(tokenizer, example, bos, texts));
    for (const TrainingExample& example : retain) retain_probes_.push_back(RowProbes(tokenizer, example, bos, texts));
  }

  absl::StatusOr<Recall> MeasureRecallOf(const train::LoraTrainer& trainer) const {
    Recall recall;
    ASSIGN_OR_RETURN(SetRecall forget, MeasureRecall(trainer, tokenizer_, forget_probes_));
    recall.forget_exact = forget.exact;
    recall.forget_rouge_l = forget.rouge_l;
    if (!retain_.empty()) {
      ASSIGN_OR_RETURN(SetRecall retain, MeasureRecall(trainer, tokenizer_, retain_probes_));
      recall.retain_exact = retain.exact;
      recall.retain_rouge_l = retain.rouge_l;
    }
    return recall;
  }

  // Measure: every measure of the trainer's state; `known` is its recall when an evaluation
  // already measured this very state (the probes' greedy generations are the costly part).
  absl::StatusOr<UnlearnMeasures> Measure(const train::LoraTrainer& trainer, const Recall* known = nullptr) const {
    UnlearnMeasures measures;
    ASSIGN_OR_RETURN(measures.forget_loss, trainer.MeanLoss(forget_));
    if (!retain_.empty()) {
      ASSIGN_OR_RETURN(measures.retain_loss.emplace(), trainer.MeanLoss(retain_));
    }
    if (known != nullptr) {
      measures.recall = *known;
    } else {
      ASSIGN_OR_RETURN(measures.recall, MeasureRecallOf(trainer));
    }
    // MUSE's memorisation: ROUGE-L F1 of the greedy continuation against the truth, of each
    // plain row's first half (verbatim) and each prompt/completion row's prompt (knowledge).
    double verbatim = 0, knowledge = 0;
    int verbatim_rows = 0, knowledge_rows = 0;
    for (const TrainingExample& example : forget_) {
      const size_t split = example.from_prompt_completion ? example.token_ids.size() - train::TargetCount(example)
                                                          : std::max<size_t>(2, example.token_ids.size() / 2);
      if (split >= example.token_ids.size()) continue;
      const std::vector<int64_t> prompt(example.token_ids.begin(), example.token_ids.begin() + split);
      const std::vector<int32_t> truth(example.token_ids.begin() + split, example.token_ids.end());
      ASSIGN_OR_RETURN(std::vector<int64_t> continuation,
                       trainer.GreedyContinuation(prompt, static_cast<int64_t>(truth.size())));
      const double rouge = eval::RougeLF1(
          tokenizer_.Decode(std::vector<int32_t>(continuation.begin(), continuation.end())), tokenizer_.Decode(truth));
      if (example.from_prompt_completion) {
        knowledge += rouge, ++knowledge_rows;
      } else {
        verbatim += rouge, ++verbatim_rows;
      }
    }
    if (verbatim_rows > 0) measures.verbatim_rouge_l = verbatim / verbatim_rows;
    if (knowledge_rows > 0) measures.knowledge_rouge_l = knowledge / knowledge_rows;
    if (!holdout_.empty()) {
      // Min-K% membership attack: members (forget) against non-members (holdout).
      auto scores = [&](const std::vector<TrainingExample>& texts) -> absl::StatusOr<std::vector<double>> {
        std::vector<double> result;
        for (const TrainingExample& example : texts) {
          ASSIGN_OR_RETURN(std::vector<double> logprobs, trainer.TargetLogprobs(example));
          result.push_back(eval::MinKPercentScore(logprobs, 0.4));
        }
        return result;
      };
      ASSIGN_OR_RETURN(std::vector<double> members, scores(forget_));
      ASSIGN_OR_RETURN(std::vector<double> others, scores(holdout_));
      measures.min_k_auc = eval::RocAuc(members, others);
    }
    return measures;
  }

 private:
  const model::Tokenizer& tokenizer_;
  const std::vector<TrainingExample>& forget_;
  const std::vector<TrainingExample>& retain_;
  const std::vector<TrainingExample>& holdout_;
  std::vector<std::vector<Probe>> forget_probes_, retain_probes_;
};

}  // namespace

absl::StatusOr<UnlearnMethod> ParseUnlearnMethod(const std::string& name) {
  if (name == "grad_ascent") return UnlearnMethod::kGradAscent;
  if (name == "grad_diff") return UnlearnMethod::kGradDiff;
  if (name == "npo") return UnlearnMethod::kNpo;
  if (name == "simnpo") return UnlearnMethod::kSimNpo;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown unlearning method \"", name, "\": use grad_ascent, grad_diff, npo or simnpo"));
}

double DefaultLearningRate(UnlearnMethod method) { return method == UnlearnMethod::kSimNpo ? 0.01 : 0.005; }

double DefaultBeta(UnlearnMethod method) { return method == UnlearnMethod::kSimNpo ? 4.5 : 0.1; }

absl::StatusOr<RetainLoss> ParseRetainLoss(const std::string& name) {
  if (name == "nll") return RetainLoss::kNll;
  if (name == "kl") return RetainLoss::kKl;
  return absl::InvalidArgumentError(absl::StrCat("unknown retain loss \"", name, "\": use nll or kl"));
}

absl::StatusOr<RecallMetric> ParseRecallMetric(const std::string& name) {
  if (name == "exact") return RecallMetric::kExact;
  if (name == "rouge_l") return RecallMetric::kRougeL;
  return absl::InvalidArgumentError(absl::StrCat("unknown recall metric \"", name, "\": use exact or rouge_l"));
}

const char* UnlearnMethodName(UnlearnMethod method) {
  switch (method) {
    case UnlearnMethod::kGradAscent: return "grad_ascent";
    case UnlearnMethod::kGradDiff: return "grad_diff";
    case UnlearnMethod::kNpo: return "npo";
    case UnlearnMethod::kSimNpo: return "simnpo";
  }
  return "?";
}

const char* RetainLossName(RetainLoss loss) { return loss == RetainLoss::kKl ? "kl" : "nll"; }
const char* RecallMetricName(RecallMetric metric) { return metric == RecallMetric::kRougeL ? "rouge_l" : "exact"; }

absl::StatusOr<UnlearnOutcome> Unlearn(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                       const deltas::DeltaSet* target, const std::vector<TrainingExample>& forget,
                                       const std::vector<TrainingExample>& retain,
                                       const std::vector<TrainingExample>& holdout, const UnlearnOptions& options,
                                       const Progress& progress) {
  if (forget.empty()) return absl::InvalidArgumentError("the forget set is empty");
  if (options.method == UnlearnMethod::kGradDiff && retain.empty()) {
    return absl::InvalidArgumentError("grad_diff needs a retain set");
  }
  if (options.batch_size < 1 || options.eval_every < 1) {
    return absl::InvalidArgumentError("batch_size and eval_every must be at least 1");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<train::LoraTrainer> trainer, train::LoraTrainer::Create(model, target, options.trainer));
  const Measurer measurer(tokenizer, forget, retain, holdout);
  const UnlearnGoal& goal = options.goal;
  UnlearnOutcome outcome;

  RETURN_IF_ERROR(Report(progress, 0.0, "measuring the target"));
  ASSIGN_OR_RETURN(outcome.before, measurer.Measure(*trainer));
  const double retain_before = Value(outcome.before.recall, goal.metric, false);
  auto evaluate = [&](int64_t step, const Recall& recall) {
    Checkpoint checkpoint{step, recall};
    checkpoint.forget_met = Value(recall, goal.metric, true) <= goal.forget_max + 1e-9;
    checkpoint.retain_met = retain.empty() || Value(recall, goal.metric, false) >= goal.retain_floor * retain_before - 1e-9;
    outcome.trajectory.push_back(checkpoint);
    return checkpoint;
  };
  std::optional<Checkpoint> best;
  deltas::DeltaSet best_factors;
  auto consider = [&](const Checkpoint& checkpoint) {  // true when it is the new best
    if (!checkpoint.forget_met) return false;
    if (best.has_value() && Value(checkpoint.recall, goal.metric, false) <= Value(best->recall, goal.metric, false)) {
      return false;
    }
    best = checkpoint;
    best_factors = trainer->NewFactors();
    return true;
  };
  consider(evaluate(0, outcome.before.recall));

  // NPO's reference: the target's own sequence log-probabilities (the trainer starts there).
  std::vector<double> reference;
  if (options.method == UnlearnMethod::kNpo) {
    at::NoGradGuard no_grad;
    for (const TrainingExample& example : forget) {
      ASSIGN_OR_RETURN(train::SequenceLosses losses, trainer->Losses({&example}));
      reference.push_back(-losses.nll_sums[0].item<double>());
    }
  }
  std::mt19937_64 random(options.trainer.seed);
  auto sample = [&](const std::vector<TrainingExample>& texts, std::vector<size_t>& indexes) {
    std::vector<size_t> all(texts.size());
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), random);
    all.resize(std::min<size_t>(all.size(), options.batch_size));
    indexes = all;
    std::vector<const TrainingExample*> batch;
    for (size_t index : all) batch.push_back(&texts[index]);
    return batch;
  };
  const int64_t micro_size = options.micro_batch_size > 0 ? options.micro_batch_size : options.batch_size;
  const bool retain_term = options.method != UnlearnMethod::kGradAscent && !retain.empty();
  const int64_t budget = options.trainer.total_steps;
  int64_t recovery_left = -1;  // evaluations left without a better checkpoint, once one meets the forget goal
  const auto started = std::chrono::steady_clock::now();
  for (int64_t step = 1; step <= budget && !(best.has_value() && best->retain_met) && recovery_left != 0; ++step) {
    // The step's loss over one sampled forget batch (and retain batch), accumulated over
    // micro-batches: per-sequence means weighted by each micro-batch's share of its batch,
    // per-token means divided by the batch's target tokens.
    auto accumulate = [&]() -> absl::StatusOr<double> {
      std::vector<size_t> indexes;
      std::vector<const TrainingExample*> batch = sample(forget, indexes);
      int64_t forget_targets = 0;
      for (const TrainingExample* example : batch) forget_targets += train::TargetCount(*example);
      double total = 0;
      size_t offset = 0;
      for (const auto& micro : train::MicroBatches(batch, micro_size)) {
        ASSIGN_OR_RETURN(train::SequenceLosses losses, trainer->Losses(micro));
        const double share = static_cast<double>(micro.size()) / batch.size();
        at::Tensor forget_loss;
        if (options.method == UnlearnMethod::kNpo) {
          std::vector<double> chosen;
          for (size_t i = 0; i < micro.size(); ++i) chosen.push_back(reference[indexes[offset + i]]);
          forget_loss = share * NpoLoss(-losses.nll_sums, at::tensor(chosen, at::kFloat).to(losses.nll_sums.device()),
                                        options.beta);
        } else if (options.method == UnlearnMethod::kSimNpo) {
          forget_loss = share * SimNpoLoss(losses.nll_sums, losses.target_counts, options.beta, options.delta);
        } else {
          forget_loss = -losses.nll_sums.sum() / static_cast<double>(std::max<int64_t>(forget_targets, 1));
        }
        offset += micro.size();
        at::Tensor loss = options.forget_weight * forget_loss;
        loss.backward();
        total += loss.item<double>();
      }
      outcome.trained_tokens += forget_targets;
      if (retain_term) {
        std::vector<size_t> ignored;
        std::vector<const TrainingExample*> retain_batch = sample(retain, ignored);
        int64_t retain_targets = 0;
        for (const TrainingExample* example : retain_batch) retain_targets += train::TargetCount(*example);
        const double per_token = options.retain_weight / static_cast<double>(std::max<int64_t>(retain_targets, 1));
        for (const auto& micro : train::MicroBatches(retain_batch, micro_size)) {
          at::Tensor loss;
          if (options.retain_loss == RetainLoss::kKl) {
            ASSIGN_OR_RETURN(at::Tensor reference_rows, trainer->TargetRowLogProbs(micro, /*reference=*/true));
            ASSIGN_OR_RETURN(at::Tensor current_rows, trainer->TargetRowLogProbs(micro, /*reference=*/false));
            loss = per_token * (reference_rows.exp() * (reference_rows - current_rows)).sum();
          } else {
            ASSIGN_OR_RETURN(train::SequenceLosses losses, trainer->Losses(micro));
            loss = per_token * losses.nll_sums.sum();
          }
          loss.backward();
          total += loss.item<double>();
        }
        outcome.trained_tokens += retain_targets;
      }
      return total;
    };
    ASSIGN_OR_RETURN(train::TrainingStep done, trainer->Step(accumulate));
    outcome.losses.push_back(done.loss);
    outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::string message = train::TrainingProgress(step, budget, done.loss, outcome.trained_tokens, outcome.seconds);
    if (step % options.eval_every == 0 || step == budget) {
      ASSIGN_OR_RETURN(Recall recall, measurer.MeasureRecallOf(*trainer));
      const Checkpoint checkpoint = evaluate(step, recall);
      if (consider(checkpoint)) {
        recovery_left = kRecoveryEvaluations;
      } else if (recovery_left > 0) {
        --recovery_left;
      }
      absl::StrAppend(&message, "; forget recall ", Value(recall, goal.metric, true));
      if (!retain.empty()) absl::StrAppend(&message, ", retain recall ", Value(recall, goal.metric, false));
    }
    RETURN_IF_ERROR(Report(progress, 0.9 * step / budget, message));
  }

  // The chosen checkpoint (or the last state), measured in full. The loop ends only right after
  // an evaluation, so the last trajectory point is the last state's recall.
  if (best.has_value()) {
    trainer->Restore(best_factors);
    outcome.chosen_step = best->step;
    outcome.forget_met = true;
    outcome.goal_met = best->retain_met;
  } else {
    outcome.chosen_step = outcome.trajectory.back().step;
  }
  RETURN_IF_ERROR(Report(progress, 0.9, "measuring the result"));
  ASSIGN_OR_RETURN(outcome.after,
                   measurer.Measure(*trainer, best.has_value() ? &best->recall : &outcome.trajectory.back().recall));
  outcome.deltas = trainer->Combined();
  return outcome;
}

}  // namespace deltaserve::ops::unlearn
