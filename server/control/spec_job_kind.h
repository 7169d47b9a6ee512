// SpecJobKind: what every job kind whose work is one Spec (MergeJobSpec, FinetuneJobSpec,
// UnlearnJobSpec: ToJson/FromJson, an `output` name) shares with the JobRunner.
//   - The constructor registers the kind: a job QUEUED when the previous process stopped
//     resumes from its stored spec; a job interrupted after publishing counts as published
//     when its output records it (OutputPublished).
//   - Submit returns the first job for a repeated idempotency key without checking again (its
//     output may exist by now); otherwise `check` validates the spec, completes it (e.g. pins
//     the datasets it names to their digests) and estimates its memory, and the job is queued
//     to `run` it.
// Thread-safe as the runner is; the registry and runner must outlive it, and it must be built
// before runner->Start().
//   SpecJobKind<MergeJobSpec> kind_{JobKind::kMerge, registry, runner, check, run};
#pragma once

#include <functional>
#include <string>
#include <utility>

#include "server/common/status_macros.h"
#include "server/control/job_artifacts.h"
#include "server/control/job_runner.h"

namespace deltaserve::control {

template <typename Spec>
class SpecJobKind {
 public:
  using Check = std::function<absl::StatusOr<int64_t>(Spec&)>;
  using Run = std::function<absl::Status(const Spec&, JobContext&)>;

  SpecJobKind(JobKind kind, const VariantRegistry* registry, JobRunner* runner, Check check, Run run)
      : kind_(kind), runner_(runner), check_(std::move(check)), run_(std::move(run)) {
    JobKindHandlers handlers;
    handlers.resume = [this](const JobRecord& record) -> absl::StatusOr<JobBody> {
      ASSIGN_OR_RETURN(Spec spec, Spec::FromJson(record.spec_json));
      return BodyFor(std::move(spec));
    };
    handlers.published = [registry](const JobRecord& record) { return OutputPublished(*registry, record); };
    runner_->RegisterKind(kind_, std::move(handlers));
  }

  absl::StatusOr<JobRecord> Submit(Spec spec, const std::string& idempotency_key) const {
    JobSubmission submission;
    submission.kind = kind_;
    submission.idempotency_key = idempotency_key;
    if (!runner_->HasIdempotencyKey(idempotency_key)) {
      ASSIGN_OR_RETURN(submission.memory_bytes, check_(spec));
    }
    submission.output_variant = spec.output;  // as the check completed it
    submission.spec_json = spec.ToJson();
    submission.body = BodyFor(std::move(spec));
    return runner_->Submit(std::move(submission));
  }

 private:
  JobBody BodyFor(Spec spec) const {
    return [run = run_, spec = std::move(spec)](JobContext& context) { return run(spec, context); };
  }

  const JobKind kind_;
  JobRunner* const runner_;
  const Check check_;
  const Run run_;
};

}  // namespace deltaserve::control
