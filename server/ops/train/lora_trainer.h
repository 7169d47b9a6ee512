// LoraTrainer: trains a new LoRA delta on top of a parent variant (or the base) with libtorch
// autograd through the serving model's own forward pass (LlamaModel::Forward without a KV
// cache). Only the new factors require gradients: the base weights and the parent's factors
// are used as they are, never copied, and stay bit-identical. New factors start as PEFT's do
// (A random, seeded; B zero), so training starts from the parent exactly.
//   - SequenceLosses gives each example's summed NLL over its target tokens and their count
//     (differentiable), from which fine-tuning and unlearning build their losses.
//   - Step runs one optimizer step: the caller's closure accumulates gradients (micro-batches:
//     one backward each) and returns the loss; then the gradients are clipped to
//     max_grad_norm and AdamW (decoupled weight decay) updates the factors with a learning
//     rate that warms up linearly for warmup_steps and then decays linearly to zero at
//     total_steps.
// Deterministic on CPU for a seed (same threads). Not thread-safe; the model and the parent
// must outlive the trainer.
//   ASSIGN_OR_RETURN(auto trainer, LoraTrainer::Create(model, &parent, options));
//   ASSIGN_OR_RETURN(TrainingStep step, trainer->Step([&] { ... loss.backward(); return value; }));
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer.h"
#include "server/ops/train/training_row.h"

namespace deltaserve::ops::train {

// One training row: token ids and which of them are targets (predicted from the tokens before
// them; target_mask[0] is ignored). Prompt/completion rows mark only the completion.
struct TrainingExample {
  std::vector<int64_t> token_ids;
  std::vector<bool> target_mask;
  bool from_prompt_completion = false;  // the targets are a completion of the tokens before them
};

// TextRows: plain rows from texts.
std::vector<TrainingRow> TextRows(const std::vector<std::string>& texts);

// RowExamples tokenizes rows with BOS: plain rows as one text, prompt/completion rows as the
// prompt's tokens followed by the completion's (so the boundary is exact), targets as
// TrainingRow says. INVALID_ARGUMENT names the row (`what` and its 1-based number) that is not
// UTF-8, has no target token, or is over max_tokens.
absl::StatusOr<std::vector<TrainingExample>> RowExamples(const model::Tokenizer& tokenizer,
                                                         const std::vector<TrainingRow>& rows,
                                                         const std::string& what, int64_t max_tokens = 1024);
// TextExamples: RowExamples of TextRows(texts).
absl::StatusOr<std::vector<TrainingExample>> TextExamples(const model::Tokenizer& tokenizer,
                                                          const std::vector<std::string>& texts,
                                                          const std::string& what, int64_t max_tokens = 1024);
// MicroBatches cuts a batch into consecutive pieces of at most `size` examples (gradient
// accumulation: one forward and backward per piece).
std::vector<std::vector<const TrainingExample*>> MicroBatches(const std::vector<const TrainingExample*>& batch,
                                                              int64_t size);
// TargetCount: how many target tokens an example has.
int64_t TargetCount(const TrainingExample& example);

// EstimateTrainingBytes: the peak memory of training rank-`rank` factors on `targets` with
// micro-batches of `tokens` tokens: the factors with their gradients and AdamW's two moments,
// plus the autograd activations (about 24 floats per hidden unit and 8 per intermediate unit,
// per token and layer) and the logits with their log-softmax and gradient.
int64_t EstimateTrainingBytes(const model::ModelConfig& config, const std::vector<model::Projection>& targets,
                              int64_t rank, int64_t tokens);

struct LoraTrainerOptions {
  int64_t rank = 8;
  double alpha = 16;  // scale = alpha / rank
  std::vector<model::Projection> targets = {model::Projection::kQuery, model::Projection::kKey,
                                            model::Projection::kValue, model::Projection::kOutput,
                                            model::Projection::kGate,  model::Projection::kUp,
                                            model::Projection::kDown};
  double learning_rate = 1e-3;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  int64_t warmup_steps = 0;
  int64_t total_steps = 100;  // where the learning rate reaches zero
  uint64_t seed = 0;
};

// Per example: the summed negative log-likelihood of its target tokens and how many there are.
struct SequenceLosses {
  at::Tensor nll_sums;      // [examples], differentiable w.r.t. the new factors
  at::Tensor target_counts;  // [examples], float
};

struct TrainingStep {
  int64_t step = 0;  // 1 after the first
  double loss = 0;
  double learning_rate = 0;
  double gradient_norm = 0;  // before clipping
};

class LoraTrainer {
 public:
  static absl::StatusOr<std::unique_ptr<LoraTrainer>> Create(const model::LlamaModel& model,
                                                             const deltas::DeltaSet* parent,
                                                             LoraTrainerOptions options);

  // SequenceLosses runs the examples as one batch (each attends only within itself).
  absl::StatusOr<SequenceLosses> Losses(const std::vector<const TrainingExample*>& examples) const;

  // TargetRowLogProbs: the next-token log-probabilities [target tokens, vocab] at the rows that
  // predict the examples' target tokens, in order; with the new factors (differentiable), or
  // with `reference` the parent's alone (no gradients): what a KL retain term compares.
  absl::StatusOr<at::Tensor> TargetRowLogProbs(const std::vector<const TrainingExample*>& examples,
                                               bool reference) const;

  // MeanLoss: NLL per target token over `examples` with the current factors (no gradients).
  absl::StatusOr<double> MeanLoss(const std::vector<TrainingExample>& examples) const;
  // TargetLogprobs: the log-probability of each target token of `example` (no gradients).
  absl::StatusOr<std::vector<double>> TargetLogprobs(const TrainingExample& example) const;
  // GreedyContinuation: `tokens` greedy next tokens after `prompt` with the current factors
  // (no gradients; recomputes the sequence per token, for short evaluation texts).
  absl::StatusOr<std::vector<int64_t>> GreedyContinuation(const std::vector<int64_t>& prompt, int64_t tokens) const;

  // Step: `accumulate` runs forward and backward passes and returns the loss to report.
  absl::StatusOr<TrainingStep> Step(const std::function<absl::StatusOr<double>()>& accumulate);

  // NewFactors: the trained delta alone (float32, one factor per targeted module), a copy.
  deltas::DeltaSet NewFactors() const;
  // Restore sets the trained factors to `snapshot` (an earlier NewFactors), e.g. to go back to
  // the best checkpoint; the optimizer's moments stay as they are.
  void Restore(const deltas::DeltaSet& snapshot);
  // Combined: the parent's factors followed by the new ones, one DeltaSet (what gets served).
  deltas::DeltaSet Combined() const;
  // The trainable tensors, A then B for each targeted module in layer order (for tests).
  const std::vector<at::Tensor>& parameters() const { return parameters_; }

 private:
  LoraTrainer(const model::LlamaModel& model, const deltas::DeltaSet* parent, LoraTrainerOptions options)
      : model_(model), parent_(parent), options_(std::move(options)) {}
  double LearningRate(int64_t step) const;

  const model::LlamaModel& model_;
  const deltas::DeltaSet* parent_;
  const LoraTrainerOptions options_;
  deltas::DeltaSet new_factors_;  // shares tensors with parameters_
  std::vector<at::Tensor> parameters_;
  std::vector<at::Tensor> first_moments_, second_moments_;
  int64_t steps_ = 0;
};

}  // namespace deltaserve::ops::train
