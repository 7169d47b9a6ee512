// JobObserver: how the JobRunner reports its jobs' state changes (telemetry implements it with
// Prometheus; tests may record). Called under the runner's lock: must be cheap, thread-safe,
// non-blocking, and must not call the runner.
#pragma once

#include <cstdint>
#include <string>

namespace deltaserve::control {

class JobObserver {
 public:
  virtual ~JobObserver() = default;
  // OnJobState: a job of `kind` ("MERGE", ...) went from state `from` ("" for a job this
  // process had not counted yet) to `to`. run_seconds: how long it ran, when it ends after
  // running (else 0). reserved_bytes: the job memory reserved by running jobs after the change.
  virtual void OnJobState(const std::string& kind, const std::string& from, const std::string& to,
                          double run_seconds, int64_t reserved_bytes) = 0;
};

}  // namespace deltaserve::control
