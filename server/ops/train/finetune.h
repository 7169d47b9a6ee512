// Finetune: LoRA fine-tuning of a parent variant (or the base) on tokenized rows, as a plain
// function: seeded epochs (each a fresh permutation of the rows) cut into batches of
// `batch_size`, each batch's mean NLL per target token accumulated over micro-batches of
// `micro_batch_size` rows (one backward each), one LoraTrainer step per batch. It reports
// "step 12/200 loss 0.4213, 13240 tokens/s" through `progress` after every step (a non-OK
// status from it stops the run and is returned), and measures the validation rows' loss before
// and after when there are any. No SQLite, registry or RPC. Blocking.
//   ASSIGN_OR_RETURN(FinetuneOutcome done, Finetune(model, &parent, examples, {}, options, progress));
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"
#include "server/ops/progress.h"
#include "server/ops/train/lora_trainer.h"

namespace deltaserve::ops::train {

struct FinetuneOptions {
  LoraTrainerOptions trainer;  // total_steps is the number of steps run
  int64_t batch_size = 8;
  int64_t micro_batch_size = 0;  // 0 = batch_size
};

struct FinetuneOutcome {
  deltas::DeltaSet deltas;  // the parent's factors followed by the new ones (float32)
  std::vector<double> losses;  // per step
  std::optional<double> validation_before, validation_after;
  int64_t trained_tokens = 0;
  double seconds = 0;
};

// TrainingProgress: "step 12/200 loss 0.4213, 13240 tokens/s".
std::string TrainingProgress(int64_t step, int64_t steps, double loss, int64_t tokens, double seconds);

absl::StatusOr<FinetuneOutcome> Finetune(const model::LlamaModel& model, const deltas::DeltaSet* parent,
                                         const std::vector<TrainingExample>& examples,
                                         const std::vector<TrainingExample>& validation,
                                         const FinetuneOptions& options, const Progress& progress);

}  // namespace deltaserve::ops::train
