#include "server/ops/train/lora_trainer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "server/common/torch_status.h"

namespace deltaserve::ops::train {
namespace {

using model::Projection;

// TrainingDeltaHook adds, for every token, the parent's factors and the new ones with plain
// differentiable operators (the serving hook's BLAS fast path bypasses autograd).
class TrainingDeltaHook : public model::ProjectionDeltaHook {
 public:
  TrainingDeltaHook(const deltas::DeltaSet* parent, const deltas::DeltaSet* trained)
      : parent_(parent), trained_(trained) {}
  void AddDelta(int64_t layer, Projection projection, const at::Tensor& input, at::Tensor& output) const override {
    for (const deltas::DeltaSet* set : {parent_, trained_}) {
      if (set != nullptr) set->AddTo(layer, projection, input, output);
    }
  }

 private:
  const deltas::DeltaSet* parent_;
  const deltas::DeltaSet* trained_;
};

}  // namespace

std::vector<TrainingRow> TextRows(const std::vector<std::string>& texts) {
  std::vector<TrainingRow> rows;
  rows.reserve(texts.size());
  for (const std::string& text : texts) rows.push_back({"", text});
  return rows;
}

absl::StatusOr<std::vector<TrainingExample>> RowExamples(const model::Tokenizer& tokenizer,
                                                         const std::vector<TrainingRow>& rows,
                                                         const std::string& what, int64_t max_tokens) {
  std::vector<TrainingExample> examples;
  for (size_t i = 0; i < rows.size(); ++i) {
    const TrainingRow& row = rows[i];
    auto failed = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(what, " ", i + 1, ": ", why));
    };
    // The prompt with BOS, then the completion without: one token sequence whose split is known.
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer.EncodePrompt(row.is_prompt_completion() ? row.prompt : row.completion);
    if (!ids.ok()) return failed(ids.status().message());
    size_t first_target = 1;
    if (row.is_prompt_completion()) {
      absl::StatusOr<std::vector<int32_t>> completion = tokenizer.Encode(row.completion);
      if (!completion.ok()) return failed(completion.status().message());
      first_target = ids->size();
      ids->insert(ids->end(), completion->begin(), completion->end());
    }
    if (ids->size() <= first_target) return failed(row.is_prompt_completion() ? "the completion is empty" : "the text is empty");
    if (static_cast<int64_t>(ids->size()) > max_tokens) {
      return failed(absl::StrCat("it has ", ids->size(), " tokens, more than ", max_tokens));
    }
    TrainingExample example;
    example.token_ids.assign(ids->begin(), ids->end());
    example.target_mask.assign(ids->size(), false);
    for (size_t t = first_target; t < ids->size(); ++t) example.target_mask[t] = true;
    example.from_prompt_completion = row.is_prompt_completion();
    examples.push_back(std::move(example));
  }
  return examples;
}

absl::StatusOr<std::vector<TrainingExample>> TextExamples(const model::Tokenizer& tokenizer,
                                                          const std::vector<std::string>& texts,
                                                          const std::string& what, int64_t max_tokens) {
  return RowExamples(tokenizer, TextRows(texts), what, max_tokens);
}

std::vector<std::vector<const TrainingExample*>> MicroBatches(const std::vector<const TrainingExample*>& batch,
                                                              int64_t size) {
  std::vector<std::vector<const TrainingExample*>> pieces;
  for (size_t start = 0; start < batch.size(); start += static_cast<size_t>(std::max<int64_t>(size, 1))) {
    const size_t end = std::min(batch.size(), start + static_cast<size_t>(std::max<int64_t>(size, 1)));
    pieces.emplace_back(batch.begin() + start, batch.begin() + end);
  }
  return pieces;
}

int64_t TargetCount(const TrainingExample& example) {
  int64_t count = 0;
  for (size_t t = 1; t < example.target_mask.size(); ++t) count += example.target_mask[t] ? 1 : 0;
  return count;
}

int64_t EstimateTrainingBytes(const model::ModelConfig& config, const std::vector<model::Projection>& targets,
                              int64_t rank, int64_t tokens) {
  int64_t factor_elements = 0;
  for (model::Projection projection : targets) {
    auto [out, in] = deltas::ProjectionShape(config, projection);
    factor_elements += rank * (out + in) * config.num_hidden_layers;
  }
  const int64_t activations =
      tokens * config.num_hidden_layers * (24 * config.hidden_size + 8 * config.intermediate_size) * 4;
  return factor_elements * 4 * 4 + activations + tokens * config.vocab_size * 4 * 3;
}

absl::StatusOr<std::unique_ptr<LoraTrainer>> LoraTrainer::Create(const model::LlamaModel& model,
                                                                 const deltas::DeltaSet* parent,
                                                                 LoraTrainerOptions options) {
  if (options.rank < 1) return absl::InvalidArgumentError(absl::StrCat("rank must be at least 1, got ", options.rank));
  if (!(options.learning_rate > 0)) return absl::InvalidArgumentError("learning_rate must be positive");
  if (options.targets.empty()) return absl::InvalidArgumentError("no target modules");
  if (options.total_steps < 1) return absl::InvalidArgumentError("total_steps must be at least 1");
  const model::ModelConfig& config = model.config();
  if (parent != nullptr && parent->num_layers() != config.num_hidden_layers) {
    return absl::InvalidArgumentError("the parent's deltas do not fit the model");
  }
  std::unique_ptr<LoraTrainer> trainer(new LoraTrainer(model, parent, std::move(options)));
  const LoraTrainerOptions& opts = trainer->options_;
  trainer->new_factors_ = deltas::DeltaSet(config.num_hidden_layers);
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(opts.seed);
  const auto float_options = at::TensorOptions().dtype(at::kFloat);
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    for (Projection projection : opts.targets) {
      auto [out, in] = deltas::ProjectionShape(config, projection);
      // PEFT's initialisation: A Kaiming-uniform (a = sqrt(5)): bound 1/sqrt(in); B zero.
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      at::Tensor a = at::empty({opts.rank, in}, float_options).uniform_(-bound, bound, generator).to(model.device());
      at::Tensor b = at::zeros({out, opts.rank}, float_options.device(model.device()));
      a.set_requires_grad(true);
      b.set_requires_grad(true);
      trainer->parameters_.push_back(a);
      trainer->parameters_.push_back(b);
      trainer->new_factors_.Add(layer, projection, {a, b, opts.alpha / opts.rank});
    }
  }
  for (const at::Tensor& parameter : trainer->parameters_) {
    trainer->first_moments_.push_back(at::zeros_like(parameter));
    trainer->second_moments_.push_back(at::zeros_like(parameter));
  }
  return trainer;
}

absl::StatusOr<SequenceLosses> LoraTrainer::Losses(const std::vector<const TrainingExample*>& examples) const {
  model::ForwardBatch batch;
  for (const TrainingExample* example : examples) {
    if (example->token_ids.size() < 2 || example->target_mask.size() != example->token_ids.size()) {
      return absl::InvalidArgumentError("a training example needs two tokens or more and one mask entry per token");
    }
    batch.sequences.push_back({0, static_cast<int64_t>(example->token_ids.size()), nullptr});
    batch.token_ids.insert(batch.token_ids.end(), example->token_ids.begin(), example->token_ids.end());
  }
  TrainingDeltaHook hook(parent_, &new_factors_);
  batch.deltas = &hook;
  SequenceLosses losses;
  absl::Status status = common::CatchTorchErrors("the training forward pass", [&] {
    const at::Tensor logprobs = at::log_softmax(model_.Forward(batch), -1);  // [tokens, vocab]
    std::vector<at::Tensor> sums;
    std::vector<double> counts;
    int64_t start = 0;
    for (const TrainingExample* example : examples) {
      const int64_t length = static_cast<int64_t>(example->token_ids.size());
      std::vector<int64_t> rows, targets;
      for (int64_t i = 1; i < length; ++i) {
        if (!example->target_mask[i]) continue;
        rows.push_back(start + i - 1);
        targets.push_back(example->token_ids[i]);
      }
      start += length;
      counts.push_back(static_cast<double>(rows.size()));
      if (rows.empty()) {
        sums.push_back(at::zeros({}, logprobs.options()));
        continue;
      }
      const at::Tensor row_index = at::tensor(rows, at::kLong).to(logprobs.device());
      const at::Tensor target_index = at::tensor(targets, at::kLong).to(logprobs.device()).unsqueeze(1);
      sums.push_back(-logprobs.index_select(0, row_index).gather(1, target_index).sum());
    }
    losses.nll_sums = at::stack(sums);
    losses.target_counts = at::tensor(counts, at::kFloat).to(logprobs.device());
  });
  if (!status.ok()) return status;
  return losses;
}

absl::StatusOr<at::Tensor> LoraTrainer::TargetRowLogProbs(const std::vector<const TrainingExample*>& examples,
                                                          bool reference) const {
  std::optional<at::NoGradGuard> no_grad;
  if (reference) no_grad.emplace();
  model::ForwardBatch batch;
  std::vector<int64_t> rows;
  int64_t start = 0;
  for (const TrainingExample* example : examples) {
    if (example->target_mask.size() != example->token_ids.size()) {
      return absl::InvalidArgumentError("a training example needs one mask entry per token");
    }
    batch.sequences.push_back({0, static_cast<int64_t>(example->token_ids.size()), nullptr});
    batch.token_ids.insert(batch.token_ids.end(), example->token_ids.begin(), example->token_ids.end());
    for (size_t i = 1; i < example->token_ids.size(); ++i) {
      if (example->target_mask[i]) rows.push_back(start + static_cast<int64_t>(i) - 1);
    }
    start += static_cast<int64_t>(example->token_ids.size());
  }
  batch.logit_rows = rows;
  TrainingDeltaHook hook(parent_, reference ? nullptr : &new_factors_);
  batch.deltas = &hook;
  at::Tensor result;
  absl::Status status = common::CatchTorchErrors("the training forward pass", [&] {
    result = at::log_softmax(model_.Forward(batch).to(at::kFloat), -1);
  });
  if (!status.ok()) return status;
  return result;
}

absl::StatusOr<double> LoraTrainer::MeanLoss(const std::vector<TrainingExample>& examples) const {
  at::NoGradGuard no_grad;
  double nll = 0, count = 0;
  for (const TrainingExample& example : examples) {
    absl::StatusOr<SequenceLosses> losses = Losses({&example});
    if (!losses.ok()) return losses.status();
    nll += losses->nll_sums.sum().item<double>();
    count += losses->target_counts.sum().item<double>();
  }
  return count > 0 ? nll / count : 0.0;
}

absl::StatusOr<std::vector<double>> LoraTrainer::TargetLogprobs(const TrainingExample& example) const {
  at::NoGradGuard no_grad;
  TrainingDeltaHook hook(parent_, &new_factors_);
  std::vector<double> result;
  absl::Status status = common::CatchTorchErrors("scoring", [&] {
    model::ForwardBatch batch;
    batch.token_ids = example.token_ids;
    batch.sequences.push_back({0, static_cast<int64_t>(example.token_ids.size()), nullptr});
    batch.deltas = &hook;
    const at::Tensor logprobs = at::log_softmax(model_.Forward(batch), -1);
    for (size_t i = 1; i < example.token_ids.size(); ++i) {
      if (example.target_mask[i]) result.push_back(logprobs[i - 1][example.token_ids[i]].item<double>());
    }
  });
  if (!status.ok()) return status;
  return result;
}

absl::StatusOr<std::vector<int64_t>> LoraTrainer::GreedyContinuation(const std::vector<int64_t>& prompt,
                                                                     int64_t tokens) const {
  at::NoGradGuard no_grad;
  TrainingDeltaHook hook(parent_, &new_factors_);
  std::vector<int64_t> sequence = prompt;
  std::vector<int64_t> continuation;
  absl::Status status = common::CatchTorchErrors("greedy generation", [&] {
    for (int64_t i = 0; i < tokens; ++i) {
      model::ForwardBatch batch;
      batch.token_ids = sequence;
      batch.sequences.push_back({0, static_cast<int64_t>(sequence.size()), nullptr});
      batch.logit_rows = {static_cast<int64_t>(sequence.size()) - 1};
      batch.deltas = &hook;
      const int64_t next = model_.Forward(batch).argmax(-1).item<int64_t>();
      continuation.push_back(next);
      sequence.push_back(next);
    }
  });
  if (!status.ok()) return status;
  return continuation;
}

double LoraTrainer::LearningRate(int64_t step) const {
  if (step <= options_.warmup_steps) return options_.learning_rate * step / std::max<int64_t>(options_.warmup_steps, 1);
  const double remaining = static_cast<double>(options_.total_steps - step + 1) /
                           std::max<int64_t>(options_.total_steps - options_.warmup_steps, 1);
  return options_.learning_rate * std::clamp(remaining, 0.0, 1.0);
}

absl::StatusOr<TrainingStep> LoraTrainer::Step(const std::function<absl::StatusOr<double>()>& accumulate) {
  for (at::Tensor& parameter : parameters_) {
    if (parameter.grad().defined()) parameter.mutable_grad().zero_();
  }
  absl::StatusOr<double> loss = accumulate();
  if (!loss.ok()) return loss.status();
  TrainingStep step;
  step.step = ++steps_;
  step.loss = *loss;
  step.learning_rate = LearningRate(step.step);
  absl::Status status = common::CatchTorchErrors("the optimizer step", [&] {
    at::NoGradGuard no_grad;
    double squared = 0;
    for (const at::Tensor& parameter : parameters_) {
      if (parameter.grad().defined()) squared += parameter.grad().pow(2).sum().item<double>();
    }
    step.gradient_norm = std::sqrt(squared);
    const double clip = options_.max_grad_norm > 0 && step.gradient_norm > options_.max_grad_norm
                            ? options_.max_grad_norm / (step.gradient_norm + 1e-12)
                            : 1.0;
    const double bias1 = 1 - std::pow(options_.beta1, step.step);
    const double bias2 = 1 - std::pow(options_.beta2, step.step);
    for (size_t i = 0; i < parameters_.size(); ++i) {
      at::Tensor& parameter = parameters_[i];
      if (!parameter.grad().defined()) continue;
      const at::Tensor gradient = parameter.grad() * clip;
      first_moments_[i].mul_(options_.beta1).add_(gradient, 1 - options_.beta1);
      second_moments_[i].mul_(options_.beta2).addcmul_(gradient, gradient, 1 - options_.beta2);
      parameter.mul_(1 - step.learning_rate * options_.weight_decay);
      const at::Tensor denominator = (second_moments_[i] / bias2).sqrt_().add_(options_.epsilon);
      parameter.addcdiv_(first_moments_[i], denominator, -step.learning_rate / bias1);
    }
  });
  if (!status.ok()) return status;
  return step;
}

deltas::DeltaSet LoraTrainer::NewFactors() const {
  deltas::DeltaSet copy(new_factors_.num_layers());
  for (int64_t layer = 0; layer < new_factors_.num_layers(); ++layer) {
    for (int p = 0; p < deltas::kProjectionCount; ++p) {
      for (const deltas::LowRankFactor& factor : new_factors_.Factors(layer, static_cast<Projection>(p))) {
        copy.Add(layer, static_cast<Projection>(p), {factor.a.detach().clone(), factor.b.detach().clone(), factor.scale});
      }
    }
  }
  return copy;
}

void LoraTrainer::Restore(const deltas::DeltaSet& snapshot) {
  at::NoGradGuard no_grad;
  for (int64_t layer = 0; layer < new_factors_.num_layers(); ++layer) {
    for (int p = 0; p < deltas::kProjectionCount; ++p) {
      const auto& current = new_factors_.Factors(layer, static_cast<Projection>(p));
      const auto& saved = snapshot.Factors(layer, static_cast<Projection>(p));
      for (size_t i = 0; i < current.size() && i < saved.size(); ++i) {
        current[i].a.copy_(saved[i].a);
        current[i].b.copy_(saved[i].b);
      }
    }
  }
}

deltas::DeltaSet LoraTrainer::Combined() const {
  deltas::DeltaSet trained = NewFactors();
  deltas::DeltaSet combined(trained.num_layers());
  for (int64_t layer = 0; layer < trained.num_layers(); ++layer) {
    for (int p = 0; p < deltas::kProjectionCount; ++p) {
      const auto projection = static_cast<Projection>(p);
      if (parent_ != nullptr) {
        for (const deltas::LowRankFactor& factor : parent_->Factors(layer, projection)) {
          combined.Add(layer, projection, {factor.a.to(at::kFloat), factor.b.to(at::kFloat), factor.scale});
        }
      }
      for (const deltas::LowRankFactor& factor : trained.Factors(layer, projection)) combined.Add(layer, projection, factor);
    }
  }
  return combined;
}

}  // namespace deltaserve::ops::train
