// UnlearnJobs: unlearning as jobs (the UNLEARN kind of the JobRunner). Submit checks the
// request at once (target servable, output free or replace_target, method, data, goal and
// hyper-parameters, memory). The job runs ops::unlearn::Unlearn (goal-directed: it trains a new
// LoRA delta on top of the target, evaluates forget and retain recall as served every
// eval_every steps, stops once the goal is met and picks the checkpoint that meets the forget
// goal with the best retain recall). When the goal is met (or accept_partial) it publishes the
// target's factors followed by the new ones as an UNLEARN variant whose parent is the target —
// under `output`, or with replace_target as the target's next version (the name switches
// atomically; the old version is kept as "TARGET@N" with keep_previous, else retired). When
// it is missed the job FAILS with FAILED_PRECONDITION and publishes nothing. Either way the
// report (MUSE-style before/after: losses, perplexities, verbatim and knowledge ROUGE-L,
// Min-K% AUC with holdout rows; recall; the trajectory; the data's sources and sha256) is kept
// on the job, and on the variant as its evaluation.
// Thread-safe; the registry and runner must outlive it.
//   UnlearnJobs unlearns(registry.get(), datasets.get(), runner.get());   // before runner->Start()
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

struct UnlearnJobSpec {
  std::string target;
  int64_t target_version = 0;  // set at submission: the version the job unlearns from
  std::string output;          // = target with replace_target
  bool replace_target = false;
  bool keep_previous = false;
  std::string method = "npo";  // grad_ascent, grad_diff, npo, simnpo
  TrainingData forget;
  TrainingData retain;
  TrainingData holdout;
  int64_t rank = 8;
  double lora_alpha = 16;
  int64_t steps = 200;  // the budget
  double learning_rate = 0;  // 0 = the method's (ops::unlearn::DefaultLearningRate), set by Check
  int64_t batch_size = 8;
  int64_t micro_batch_size = 0;  // 0 = batch_size (no accumulation)
  double forget_weight = 1.0;  // gamma
  double retain_weight = 3.0;  // alpha
  double beta = -1;            // negative = the method's (ops::unlearn::DefaultBeta), set by Check
  double delta = 0.0;          // simnpo
  std::string retain_loss = "nll";  // nll or kl
  // The goal (ops::unlearn::UnlearnGoal) and how often it is evaluated.
  std::string recall_metric = "exact";  // exact or rouge_l
  double forget_recall_max = 0.0;
  double retain_floor = 0.9;
  int64_t eval_every = 5;
  // Publish the best checkpoint even when the goal was missed (its evaluation says so).
  bool accept_partial = false;
  uint64_t seed = 0;

  std::string ToJson() const;
  static absl::StatusOr<UnlearnJobSpec> FromJson(const std::string& json);
};

class UnlearnJobs {
 public:
  // The constructor registers the UNLEARN kind with `runner`, which must not be started yet.
  UnlearnJobs(VariantRegistry* registry, const DatasetStore* datasets, JobRunner* runner);

  absl::StatusOr<JobRecord> Submit(UnlearnJobSpec spec, const std::string& idempotency_key);

 private:
  absl::StatusOr<int64_t> Check(UnlearnJobSpec& spec) const;
  absl::Status Run(const UnlearnJobSpec& spec, JobContext& context);

  VariantRegistry* const registry_;
  const DatasetStore* const datasets_;
  const SpecJobKind<UnlearnJobSpec> kind_;
};

}  // namespace deltaserve::control
