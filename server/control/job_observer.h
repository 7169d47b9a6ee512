// JobObserver: how the JobRunner reports its jobs' state changes (telemetry implements it with
// Prometheus; tests may record). Called under the runner's lock: must be cheap, thread-safe,
// non-blocking, and must not call the runner.
#pragma once

#include <cstdint>
#include <optional>

#include "server/control/job_types.h"

namespace deltaserve::control {

class JobObserver {
 public:
  virtual ~JobObserver() = default;
  // OnJobState: a job of `kind` went from state `from` (none for a job this process had not
  // counted yet) to `to`. run_seconds: how long it ran, when it ends after
  // running (else 0). reserved_bytes: the job memory reserved by running jobs after the change.
  virtual void OnJobState(JobKind kind, std::optional<JobState> from, JobState to, double run_seconds,
                          int64_t reserved_bytes) = 0;
};

}  // namespace deltaserve::control
