#include "server/ops/train/finetune.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"

namespace deltaserve::ops::train {

std::string TrainingProgress(int64_t step, int64_t steps, double loss, int64_t tokens, double seconds) {
  return absl::StrCat("step ", step, "/", steps, " loss ", absl::SixDigits(loss), ", ",
                      static_cast<int64_t>(tokens / std::max(seconds, 1e-9)), " tokens/s");
}

absl::StatusOr<FinetuneOutcome> Finetune(const model::LlamaModel& model, const deltas::DeltaSet* parent,
                                         const std::vector<TrainingExample>& examples,
                                         const std::vector<TrainingExample>& validation,
                                         const FinetuneOptions& options, const Progress& progress) {
  if (examples.empty()) return absl::InvalidArgumentError("no training rows");
  if (options.batch_size < 1) return absl::InvalidArgumentError("batch_size must be at least 1");
  ASSIGN_OR_RETURN(std::unique_ptr<LoraTrainer> trainer, LoraTrainer::Create(model, parent, options.trainer));
  FinetuneOutcome outcome;
  if (!validation.empty()) {
    ASSIGN_OR_RETURN(outcome.validation_before.emplace(), trainer->MeanLoss(validation));
  }
  const int64_t steps = options.trainer.total_steps;
  const int64_t micro_size = options.micro_batch_size > 0 ? options.micro_batch_size : options.batch_size;
  std::mt19937_64 random(options.trainer.seed);
  std::vector<size_t> order;
  size_t next = 0;
  const auto started = std::chrono::steady_clock::now();
  for (int64_t step = 1; step <= steps; ++step) {
    std::vector<const TrainingExample*> batch;
    while (static_cast<int64_t>(batch.size()) < std::min<int64_t>(options.batch_size, examples.size())) {
      if (next == order.size()) {
        order.resize(examples.size());
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), random);
        next = 0;
      }
      batch.push_back(&examples[order[next++]]);
    }
    // The batch's mean NLL per target token, accumulated over its micro-batches.
    auto accumulate = [&]() -> absl::StatusOr<double> {
      int64_t targets = 0;
      for (const TrainingExample* example : batch) targets += TargetCount(*example);
      double loss_sum = 0;
      for (const auto& micro : MicroBatches(batch, micro_size)) {
        ASSIGN_OR_RETURN(SequenceLosses sequence, trainer->Losses(micro));
        at::Tensor loss = sequence.nll_sums.sum() / static_cast<double>(std::max<int64_t>(targets, 1));
        loss.backward();
        loss_sum += loss.item<double>();
      }
      outcome.trained_tokens += targets;
      return loss_sum;
    };
    ASSIGN_OR_RETURN(TrainingStep done, trainer->Step(accumulate));
    outcome.losses.push_back(done.loss);
    outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    RETURN_IF_ERROR(Report(progress, static_cast<double>(step) / steps,
                           TrainingProgress(step, steps, done.loss, outcome.trained_tokens, outcome.seconds)));
  }
  if (!validation.empty()) {
    ASSIGN_OR_RETURN(outcome.validation_after.emplace(), trainer->MeanLoss(validation));
  }
  outcome.deltas = trainer->Combined();
  return outcome;
}

}  // namespace deltaserve::ops::train
