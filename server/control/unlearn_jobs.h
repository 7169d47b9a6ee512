// UnlearnJobs: unlearning as jobs (the UNLEARN kind of the JobRunner). A job trains a new LoRA
// delta on top of a target variant so that it forgets the forget texts while keeping the
// retain texts: total loss = gamma * L_forget + alpha * L_retain (NLL on the retain texts), with
//   - grad_ascent: L_forget = -NLL(forget), no retain term;
//   - grad_diff:   the same plus the retain term;
//   - npo:         L_forget = NpoLoss against the target's own sequence log-probabilities;
//   - simnpo:      L_forget = SimNpoLoss (no reference).
// Each set is inline texts or a dataset (plain or prompt/completion rows; see TrainingData).
// Before and after training it reports, on the same rows: forget and retain loss and
// perplexity, verbatim memorisation (ROUGE-L F1 between the greedy continuation of each plain
// forget row's first half and its true second half), knowledge memorisation (ROUGE-L F1 of the
// greedy answer to each prompt/completion forget row's prompt against its completion), and,
// with holdout rows, the AUC of a Min-K% (k = 0.4) membership attack separating forget from
// holdout rows; and the source and sha256 of every set. The result is published as an UNLEARN
// variant whose parent is the target (its factors followed by the new ones: one low-rank
// delta) — under `output`, or with replace_target as the target's next version (the name
// switches atomically; the old version is kept as "TARGET@N" with keep_previous, else retired).
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

inline constexpr const char* kUnlearnJobKind = "UNLEARN";

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
  int64_t steps = 30;
  double learning_rate = 1e-3;
  int64_t batch_size = 8;
  int64_t micro_batch_size = 0;  // 0 = batch_size (no accumulation)
  double forget_weight = 1.0;  // gamma
  double retain_weight = 1.0;  // alpha
  double beta = -1;            // npo 0.1, simnpo 4.5 when negative
  double delta = 0.0;          // simnpo
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
