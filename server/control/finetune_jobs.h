// FinetuneJobs: LoRA fine-tuning of a variant (or the base) as jobs (the FINETUNE kind of the
// JobRunner). Submit checks the request at once (output name free and valid, parent servable,
// training data present — inline texts or a dataset the job may use — and tokenizable within
// the length limit, hyper-parameters in range, memory estimate within the job budget). The job
// tokenizes the rows (BOS; loss on every token of a plain text, on the completion only of a
// prompt/completion row), trains new LoRA factors with LoraTrainer through the serving model (frozen; never
// copied) in seeded shuffled batches (each in micro-batches whose gradients accumulate), reports step, loss and tokens/s as progress (a cancel
// stops it within one step), then writes the parent's factors followed by the new ones as one
// PEFT adapter and publishes it as a FINETUNE variant. Its lineage names the parent and holds
// the recipe without the raw data (its source and sha256 instead); its evaluation holds the
// training loss curve, the validation loss before and after (when validation texts are given)
// and the training speed.
// Thread-safe; the registry and runner must outlive it.
//   FinetuneJobs finetunes(registry.get(), datasets.get(), runner.get());   // before runner->Start()
//   ASSIGN_OR_RETURN(JobRecord job, finetunes.Submit(spec, ""));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/control/dataset_store.h"
#include "server/control/job_runner.h"
#include "server/control/training_data.h"
#include "server/control/spec_job_kind.h"
#include "server/control/variant_registry.h"

namespace deltaserve::control {

struct FinetuneJobSpec {
  std::string parent;  // "" = the base model
  std::string output;
  TrainingData train;
  TrainingData validation;  // optional
  int64_t rank = 8;
  double alpha = 16;
  std::vector<std::string> target_modules;  // "q_proj", ...; empty = all seven
  int64_t steps = 0;   // 0: epochs over the texts
  int64_t epochs = 1;
  double learning_rate = 1e-3;
  int64_t batch_size = 8;
  int64_t micro_batch_size = 0;  // 0 = batch_size (no accumulation)
  int64_t warmup_steps = 0;
  uint64_t seed = 0;

  std::string ToJson() const;
  static absl::StatusOr<FinetuneJobSpec> FromJson(const std::string& json);
};

class FinetuneJobs {
 public:
  // The constructor registers the FINETUNE kind with `runner`, which must not be started yet.
  FinetuneJobs(VariantRegistry* registry, const DatasetStore* datasets, JobRunner* runner);

  absl::StatusOr<JobRecord> Submit(FinetuneJobSpec spec, const std::string& idempotency_key);

 private:
  absl::StatusOr<int64_t> Check(FinetuneJobSpec& spec) const;
  absl::Status Run(const FinetuneJobSpec& spec, JobContext& context);

  VariantRegistry* const registry_;
  const DatasetStore* const datasets_;
  const SpecJobKind<FinetuneJobSpec> kind_;
};

}  // namespace deltaserve::control
