// JobRunner: runs the control plane's jobs (merges; later fine-tunes, unlearning, edits) on its
// own worker threads, never the engine loop, and keeps every job as a row in the CatalogStore.
//   - Submit stores a job QUEUED and returns it. A job whose idempotency key was used before
//     returns the earlier job instead (ALREADY_EXISTS if that one asked for something else).
//     Two unfinished jobs may not produce the same output variant (ALREADY_EXISTS).
//   - Jobs start in submission order, when a worker is free and their memory reservation fits
//     in what running jobs leave of the budget; a job that could never fit is refused at Submit
//     with RESOURCE_EXHAUSTED. Reservations are the job kind's estimate of its peak memory.
//     The move to RUNNING is decided under the runner's lock the moment it becomes possible
//     (in Submit, Cancel, or when a job ends), so once Submit returns, Get tells whether the
//     job started: nothing waits on a worker thread's timing.
//   - Workers run at a lower CPU priority (nice) with few intra-op threads, so serving keeps
//     the CPU when both want it. A body calls JobContext::Step between steps: it records
//     progress, sleeps `step_pause`, and returns CANCELLED once the job was cancelled.
//   - Cancel ends a QUEUED job at once and asks a RUNNING one to stop at its next Step.
//   - Watch calls a listener with the job's record now and after every change.
//   - Start resolves what a previous process left: RUNNING jobs become FAILED ("interrupted")
//     unless their kind says their output was published (then SUCCEEDED); QUEUED jobs are
//     resumed through their kind. Stop leaves QUEUED jobs queued for the next start, asks
//     RUNNING ones to stop and records them FAILED ("interrupted").
// Thread-safe. Watch listeners run under the runner's lock: they must be quick and must not
// call the runner. The store must outlive the runner.
//   runner->RegisterKind(JobKind::kMerge, {resume, published});
//   RETURN_IF_ERROR(runner->Start());
//   ASSIGN_OR_RETURN(JobRecord job, runner->Submit(std::move(submission)));
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/common/clock.h"
#include "server/control/catalog_store.h"
#include "server/control/job_observer.h"

namespace deltaserve::control {

// JobId gives a job's API id, "job-<number>"; ParseJobId reverses it (INVALID_ARGUMENT for
// anything else).
std::string JobId(int64_t number);
absl::StatusOr<int64_t> ParseJobId(const std::string& id);

class JobRunner;

// JobContext: what a running job's body sees of the runner.
class JobContext {
 public:
  JobContext(JobRunner* runner, JobRecord record) : runner_(runner), record_(std::move(record)) {}
  // Step records progress (0..1, never lower than before) and what the job does now, lets
  // serving run (step_pause, cut short by a cancel or a stop), and returns CANCELLED once the
  // job is cancelled or the runner stops; the body should then clean up and return that status.
  absl::Status Step(double progress, const std::string& message);
  // The job as it started (number, spec, output variant).
  const JobRecord& record() const { return record_; }
  // SetResult: the message the job keeps once it SUCCEEDED (default "succeeded"), e.g. what a
  // job without an output variant produced.
  void SetResult(std::string message) { result_ = std::move(message); }
  const std::string& result() const { return result_; }
  // SetReport: a JSON document the job keeps whatever its end (e.g. why a goal was missed).
  void SetReport(std::string json) { report_ = std::move(json); }
  const std::string& report() const { return report_; }

 private:
  JobRunner* runner_;
  JobRecord record_;
  std::string result_ = "succeeded";
  std::string report_;
};

// A job's work. OK = SUCCEEDED; CANCELLED after Step said so = CANCELLED; else FAILED with the
// status as its error.
using JobBody = std::function<absl::Status(JobContext&)>;

struct JobKindHandlers {
  // resume rebuilds the body of a job that was QUEUED when the previous process stopped.
  std::function<absl::StatusOr<JobBody>(const JobRecord&)> resume;
  // published says whether a job that was RUNNING when the previous process stopped had
  // already published its output (its last act), i.e. it succeeded.
  std::function<bool(const JobRecord&)> published;
};

struct JobSubmission {
  JobKind kind = JobKind::kMerge;
  std::string spec_json = "{}";
  std::string output_variant;
  std::string idempotency_key;  // "" = none
  int64_t memory_bytes = 0;     // peak memory the job may use
  JobBody body;
};

struct JobRunnerOptions {
  int workers = 1;                               // --job-workers: jobs that run at once
  int64_t memory_bytes = int64_t{4} << 30;       // --job-memory-bytes: summed over running jobs
  int threads_per_job = 1;                       // --job-threads: intra-op CPU threads of a job
  int nice = 10;                                 // CPU priority of workers below serving's
  absl::Duration step_pause = absl::ZeroDuration();  // --job-step-pause-ms
  JobObserver* observer = nullptr;                   // optional; must outlive the runner
  // Job timestamps and step pauses; null = common::RealClock(). Must outlive the runner.
  common::Clock* clock = nullptr;
};

struct JobFilter {
  std::optional<JobState> state;  // none = any
  std::optional<JobKind> kind;    // none = any
};

class JobRunner {
 public:
  static absl::StatusOr<std::unique_ptr<JobRunner>> Create(JobRunnerOptions options, CatalogStore* store);
  ~JobRunner();  // Stop()
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  // RegisterKind and Start: kinds first, then Start once.
  void RegisterKind(JobKind kind, JobKindHandlers handlers);
  absl::Status Start();
  void Stop();

  absl::StatusOr<JobRecord> Submit(JobSubmission submission);
  // HasIdempotencyKey: some job was submitted with `key` (Submit would return it).
  bool HasIdempotencyKey(const std::string& key) const;
  absl::StatusOr<JobRecord> Get(int64_t number) const;
  // List returns up to `limit` jobs matching `filter` with numbers below `before` (0 = no
  // bound), newest first.
  std::vector<JobRecord> List(const JobFilter& filter, int64_t before, size_t limit) const;
  // Cancel: FAILED_PRECONDITION when the job already ended.
  absl::StatusOr<JobRecord> Cancel(int64_t number);

  using Listener = std::function<void(const JobRecord&)>;
  // Watch calls `listener` with the job's record at once and after every change; returns a
  // token for Unwatch, after which the listener is never called again.
  absl::StatusOr<int64_t> Watch(int64_t number, Listener listener);
  void Unwatch(int64_t token);

  const JobRunnerOptions& options() const { return options_; }

 private:
  friend class JobContext;
  struct Job {
    JobRecord record;
    JobBody body;  // until the job ends
    bool cancel_requested = false;
  };

  JobRunner(JobRunnerOptions options, CatalogStore* store)
      : options_(std::move(options)), store_(store),
        clock_(options_.clock != nullptr ? options_.clock : common::RealClock()) {}
  int64_t NowNanos() const { return absl::ToUnixNanos(clock_->Now()); }
  void Work();
  bool CanStartLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // DispatchLocked moves queued jobs to RUNNING while a worker and memory are free, and hands
  // them to the workers.
  void DispatchLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Changed persists a state change (persist) and tells the job's watchers.
  void ChangedLocked(const Job& job, bool persist) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void FinishLocked(Job& job, const absl::Status& status, const std::string& result = "succeeded") ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Observe tells the observer (if any) of a state change, except while Start restores rows
  // that this process never counted.
  // `from` is none for a job this process had not counted yet.
  void ObserveLocked(const JobRecord& record, std::optional<JobState> from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::Status StepLocked(int64_t number, double progress, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::StatusOr<Job*> FindLocked(int64_t number) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const JobRunnerOptions options_;
  CatalogStore* const store_;
  common::Clock* const clock_;
  std::map<JobKind, JobKindHandlers> kinds_;  // set before Start, read-only after

  mutable absl::Mutex mutex_;
  absl::CondVar work_available_;
  // Every job by number; QUEUED and RUNNING ones hold their body.
  std::map<int64_t, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mutex_);
  // QUEUED job numbers in submission order.
  std::deque<int64_t> queue_ ABSL_GUARDED_BY(mutex_);
  // RUNNING jobs no worker has taken up yet, in dispatch order.
  std::deque<int64_t> dispatched_ ABSL_GUARDED_BY(mutex_);
  // RUNNING jobs (dispatched or taken up); never above options_.workers.
  int running_jobs_ ABSL_GUARDED_BY(mutex_) = 0;
  // Memory reserved by RUNNING jobs; never above options_.memory_bytes.
  int64_t reserved_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  struct Watcher {
    int64_t number;
    Listener listener;
  };
  std::map<int64_t, Watcher> watchers_ ABSL_GUARDED_BY(mutex_);
  int64_t next_watch_token_ ABSL_GUARDED_BY(mutex_) = 1;
  bool started_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace deltaserve::control
