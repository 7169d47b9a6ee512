// MergeJobs: merges of variants as jobs (the MERGE kind of the JobRunner). Submit checks the
// request at once, so that a bad one is refused with the reason and never queued: the output
// name is well-formed and free, the inputs exist, can be served and name one base model
// (adapter_config.json's base_model_name_or_path, where they name one), the recipe is valid,
// and the estimated peak memory fits the job budget (RESOURCE_EXHAUSTED otherwise). The job
// then reads its inputs' adapter files in float32 into host memory (merges compute on the host
// and leave the device to serving; --job-memory-bytes bounds them there), runs MergeVariants
// a module at a time (progress and cancellation between modules), writes the result as a PEFT
// adapter into a staging directory, and publishes it as a MERGE variant whose lineage holds
// the inputs (parents), the recipe (the job's spec) and the job id, and whose evaluation
// reports each re-compressed module's relative Frobenius error. Nothing is published unless
// every step succeeded; a crash leaves only a staging directory, removed at the next start-up.
// Thread-safe; the registry and runner must outlive it.
//   MergeJobs merges(registry.get(), runner.get());   // before runner->Start()
//   ASSIGN_OR_RETURN(JobRecord job, merges.Submit(spec, "request-42"));
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/control/job_runner.h"
#include "server/control/spec_job_kind.h"
#include "server/control/variant_registry.h"
#include "server/ops/merge/merge_variants.h"

namespace deltaserve::control {

struct MergeInputSpec {
  std::string variant;
  double weight = 1.0;
};

struct MergeJobSpec {
  std::vector<MergeInputSpec> inputs;
  std::string output;
  // recipe.rank 0 = the largest module rank among the inputs (filled in when the job runs; the
  // output's lineage records the rank used).
  ops::merge::MergeRecipe recipe;

  // ToJson is canonical (sorted keys), so equal specs give equal text; it is also the recipe
  // recorded in the output's lineage.
  std::string ToJson() const;
  static absl::StatusOr<MergeJobSpec> FromJson(const std::string& json);
};

class MergeJobs {
 public:
  // The constructor registers the MERGE kind with `runner`, which must not be started yet.
  MergeJobs(VariantRegistry* registry, JobRunner* runner);

  absl::StatusOr<JobRecord> Submit(MergeJobSpec spec, const std::string& idempotency_key);

 private:
  // Check validates `spec` and returns its memory estimate.
  absl::StatusOr<int64_t> Check(const MergeJobSpec& spec) const;
  absl::Status Run(const MergeJobSpec& spec, JobContext& context);

  VariantRegistry* const registry_;
  const SpecJobKind<MergeJobSpec> kind_;
};

}  // namespace deltaserve::control
