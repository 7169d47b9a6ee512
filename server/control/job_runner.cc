#include "server/control/job_runner.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <exception>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "server/common/log.h"
#include "server/engine/intra_op_threads.h"

namespace deltaserve::control {
namespace {

constexpr const char* kJobIdPrefix = "job-";

// Worker threads yield the CPU to serving: a higher nice value (Linux applies it per thread) and
// few intra-op threads for their own tensor operations (a per-thread setting).
void ConfigureWorkerThread(const JobRunnerOptions& options) {
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), options.nice) != 0) {
    common::Log("job worker: could not lower its CPU priority; jobs compete with serving as equals");
  }
  engine::SetIntraOpThreadsOfThisThread(options.threads_per_job);
}

std::string MiB(int64_t bytes) { return absl::StrCat(bytes >> 20, " MiB"); }

}  // namespace

std::string JobId(int64_t number) { return absl::StrCat(kJobIdPrefix, number); }

absl::StatusOr<int64_t> ParseJobId(const std::string& id) {
  int64_t number = 0;
  if (!absl::StartsWith(id, kJobIdPrefix) || !absl::SimpleAtoi(id.substr(4), &number) || number < 1) {
    return absl::InvalidArgumentError(absl::StrCat("\"", id, "\" is not a job id (they look like job-12)"));
  }
  return number;
}

absl::Status JobContext::Step(double progress, const std::string& message) {
  JobRunner& runner = *runner_;
  absl::MutexLock lock(&runner.mutex_);
  absl::Status status = runner.StepLocked(record_.number, progress, message);
  if (!status.ok()) return status;
  if (runner.options_.step_pause > absl::ZeroDuration()) {
    // The pause ends early for a cancel or a stop, which the next Step reports.
    const JobRunner::Job& job = *runner.jobs_.at(record_.number);
    auto interrupted = [&runner, &job]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(runner.mutex_) {
      return job.cancel_requested || runner.stopping_;
    };
    runner.clock_->AwaitWithDeadline(&runner.mutex_, absl::Condition(&interrupted),
                                     runner.clock_->Now() + runner.options_.step_pause);
  } else {
    runner.mutex_.Unlock();
    std::this_thread::yield();
    runner.mutex_.Lock();
  }
  return status;
}

absl::StatusOr<std::unique_ptr<JobRunner>> JobRunner::Create(JobRunnerOptions options, CatalogStore* store) {
  if (options.workers < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--job-workers must be at least 1, got ", options.workers));
  }
  if (options.memory_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--job-memory-bytes must be positive, got ", options.memory_bytes));
  }
  if (options.threads_per_job < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--job-threads must be at least 1, got ", options.threads_per_job));
  }
  if (options.step_pause < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--job-step-pause-ms must not be negative");
  }
  return std::unique_ptr<JobRunner>(new JobRunner(std::move(options), store));
}

JobRunner::~JobRunner() { Stop(); }

void JobRunner::RegisterKind(JobKind kind, JobKindHandlers handlers) {
  kinds_[kind] = std::move(handlers);
}

absl::Status JobRunner::Start() {
  absl::StatusOr<std::vector<JobRecord>> rows = store_->ListJobs();
  if (!rows.ok()) return rows.status();
  absl::MutexLock lock(&mutex_);
  if (started_) return absl::FailedPreconditionError("the job runner was started already");
  int resumed = 0, interrupted = 0;
  for (JobRecord& row : *rows) {
    auto job = std::make_unique<Job>();
    job->record = std::move(row);
    JobRecord& record = job->record;
    auto kind = kinds_.find(record.kind);
    if (record.state == JobState::kQueued) {
      absl::StatusOr<JobBody> body =
          kind == kinds_.end() ? absl::UnimplementedError(absl::StrCat("no handler for job kind ", JobKindName(record.kind)))
          : record.memory_bytes > options_.memory_bytes
              ? absl::ResourceExhaustedError(absl::StrCat("it needs about ", MiB(record.memory_bytes),
                                                          ", more than --job-memory-bytes now allows (",
                                                          MiB(options_.memory_bytes), ")"))
              : kind->second.resume(record);
      if (body.ok()) {
        job->body = std::move(*body);
        queue_.push_back(record.number);
        ++resumed;
      } else {
        FinishLocked(*job, absl::Status(body.status().code(),
                                        absl::StrCat("could not resume after a restart: ", body.status().message())));
      }
    } else if (record.state == JobState::kRunning) {
      ++interrupted;
      if (kind != kinds_.end() && kind->second.published(record)) {
        FinishLocked(*job, absl::OkStatus());
      } else {
        FinishLocked(*job, absl::AbortedError("interrupted: the server stopped while the job was running; "
                                              "submit it again"));
      }
    }
    jobs_[record.number] = std::move(job);
  }
  if (resumed + interrupted > 0) {
    common::Log(absl::StrCat("jobs: ", resumed, " queued jobs resumed, ", interrupted,
                             " interrupted by the previous stop"));
  }
  started_ = true;
  for (int64_t number : queue_) ObserveLocked(jobs_[number]->record, std::nullopt);
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { Work(); });
  DispatchLocked();
  return absl::OkStatus();
}

void JobRunner::Stop() {
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return;
    stopping_ = true;
    work_available_.SignalAll();
  }
  for (std::thread& worker : workers_) worker.join();
  // Jobs dispatched that no worker took up never ran: queued again, for the next start.
  absl::MutexLock lock(&mutex_);
  for (int64_t number : dispatched_) {
    Job& job = *jobs_.at(number);
    job.record.state = JobState::kQueued;
    job.record.started_unix_nanos = 0;
    job.record.message = "queued";
    reserved_bytes_ -= job.record.memory_bytes;
    --running_jobs_;
    ChangedLocked(job, /*persist=*/true);
    ObserveLocked(job.record, JobState::kRunning);
  }
  dispatched_.clear();
}

bool JobRunner::CanStartLocked() const {
  if (queue_.empty() || running_jobs_ >= options_.workers) return false;
  const Job& head = *jobs_.at(queue_.front());
  return reserved_bytes_ + head.record.memory_bytes <= options_.memory_bytes;
}

void JobRunner::DispatchLocked() {
  if (!started_ || stopping_) return;
  bool dispatched = false;
  while (CanStartLocked()) {
    Job& job = *jobs_.at(queue_.front());
    dispatched_.push_back(queue_.front());
    queue_.pop_front();
    job.record.state = JobState::kRunning;
    job.record.started_unix_nanos = NowNanos();
    job.record.message = "started";
    reserved_bytes_ += job.record.memory_bytes;
    ++running_jobs_;
    ChangedLocked(job, /*persist=*/true);
    ObserveLocked(job.record, JobState::kQueued);
    dispatched = true;
  }
  if (dispatched) work_available_.SignalAll();
}

void JobRunner::Work() {
  ConfigureWorkerThread(options_);
  while (true) {
    Job* job = nullptr;
    JobBody body;
    {
      absl::MutexLock lock(&mutex_);
      while (!stopping_ && dispatched_.empty()) work_available_.Wait(&mutex_);
      if (stopping_) return;
      job = jobs_.at(dispatched_.front()).get();
      dispatched_.pop_front();
      body = job->body;
    }
    JobContext context(this, job->record);
    absl::Status status;
    try {
      status = body(context);
    } catch (const std::exception& error) {
      status = absl::InternalError(absl::StrCat("the job threw: ", error.what()));
    }
    absl::MutexLock lock(&mutex_);
    reserved_bytes_ -= job->record.memory_bytes;
    --running_jobs_;
    job->record.report_json = context.report();
    FinishLocked(*job, status, context.result());
    DispatchLocked();
  }
}

void JobRunner::FinishLocked(Job& job, const absl::Status& status, const std::string& result) {
  JobRecord& record = job.record;
  const JobState from = record.state;
  if (status.ok()) {
    record.state = JobState::kSucceeded;
    record.progress = 1.0;
    record.message = result;
  } else if (absl::IsCancelled(status) && stopping_) {
    record.state = JobState::kFailed;
    record.error = "interrupted: the server shut down while the job was running; submit it again";
    record.error_code = absl::StatusCodeToString(absl::StatusCode::kAborted);
    record.message = "interrupted";
  } else if (absl::IsCancelled(status) && job.cancel_requested) {
    record.state = JobState::kCancelled;
    record.message = "cancelled";
  } else {
    record.state = JobState::kFailed;
    record.error = std::string(status.message());
    record.error_code = absl::StatusCodeToString(status.code());
    record.message = "failed";
  }
  record.finished_unix_nanos = NowNanos();
  job.body = nullptr;
  ChangedLocked(job, /*persist=*/true);
  ObserveLocked(record, from);
}

void JobRunner::ObserveLocked(const JobRecord& record, std::optional<JobState> from) {
  if (options_.observer == nullptr || !started_) return;
  const double run_seconds = from == JobState::kRunning && record.started_unix_nanos > 0
                                 ? (record.finished_unix_nanos - record.started_unix_nanos) * 1e-9
                                 : 0.0;
  options_.observer->OnJobState(record.kind, from, record.state, run_seconds, reserved_bytes_);
}

void JobRunner::ChangedLocked(const Job& job, bool persist) {
  if (persist) {
    absl::Status stored = store_->UpdateJob(job.record);
    if (!stored.ok()) {
      common::Log(absl::StrCat(JobId(job.record.number), " is ", JobStateName(job.record.state),
                               " but the catalog did not record it: ", stored.message()));
    }
  }
  for (const auto& [token, watcher] : watchers_) {
    if (watcher.number == job.record.number) watcher.listener(job.record);
  }
}

absl::Status JobRunner::StepLocked(int64_t number, double progress, const std::string& message) {
  Job& job = *jobs_.at(number);
  job.record.progress = std::clamp(std::max(progress, job.record.progress), 0.0, 1.0);
  job.record.message = message;
  ChangedLocked(job, /*persist=*/false);
  if (stopping_) return absl::CancelledError("the server is shutting down");
  if (job.cancel_requested) return absl::CancelledError(absl::StrCat(JobId(number), " was cancelled"));
  return absl::OkStatus();
}

absl::StatusOr<JobRunner::Job*> JobRunner::FindLocked(int64_t number) const {
  auto found = jobs_.find(number);
  if (found == jobs_.end()) return absl::NotFoundError(absl::StrCat(JobId(number), " does not exist"));
  return found->second.get();
}

absl::StatusOr<JobRecord> JobRunner::Submit(JobSubmission submission) {
  if (kinds_.count(submission.kind) == 0) {
    return absl::InternalError(absl::StrCat("job kind ", JobKindName(submission.kind), " is not registered"));
  }
  absl::MutexLock lock(&mutex_);
  if (!started_ || stopping_) return absl::UnavailableError("the job runner is not running");
  if (!submission.idempotency_key.empty()) {
    for (const auto& [number, job] : jobs_) {
      if (job->record.idempotency_key != submission.idempotency_key) continue;
      if (job->record.kind == submission.kind && job->record.spec_json == submission.spec_json &&
          job->record.output_variant == submission.output_variant) {
        return job->record;
      }
      return absl::AlreadyExistsError(absl::StrCat("idempotency key \"", submission.idempotency_key,
                                                   "\" was used for a different request (", JobId(number),
                                                   "); use a new key for a new request"));
    }
  }
  if (submission.memory_bytes > options_.memory_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the job needs about ", MiB(submission.memory_bytes), " of memory, more than the server gives jobs (",
        MiB(options_.memory_bytes), ", --job-memory-bytes); use fewer inputs or a smaller rank, or raise the limit"));
  }
  if (!submission.output_variant.empty()) {
    for (const auto& [number, job] : jobs_) {
      if (!IsTerminal(job->record.state) && job->record.output_variant == submission.output_variant) {
        return absl::AlreadyExistsError(absl::StrCat(JobId(number), " is already producing variant \"",
                                                     submission.output_variant, "\""));
      }
    }
  }
  JobRecord record;
  record.kind = submission.kind;
  record.spec_json = std::move(submission.spec_json);
  record.output_variant = std::move(submission.output_variant);
  record.idempotency_key = std::move(submission.idempotency_key);
  record.memory_bytes = submission.memory_bytes;
  record.message = "queued";
  record.created_unix_nanos = NowNanos();
  absl::Status stored = store_->InsertJob(record);
  if (!stored.ok()) return stored;
  auto job = std::make_unique<Job>();
  job->record = record;
  job->body = std::move(submission.body);
  jobs_[record.number] = std::move(job);
  queue_.push_back(record.number);
  ObserveLocked(record, std::nullopt);
  DispatchLocked();
  return record;
}

bool JobRunner::HasIdempotencyKey(const std::string& key) const {
  absl::MutexLock lock(&mutex_);
  for (const auto& [number, job] : jobs_) {
    if (!key.empty() && job->record.idempotency_key == key) return true;
  }
  return false;
}

absl::StatusOr<JobRecord> JobRunner::Get(int64_t number) const {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Job*> job = FindLocked(number);
  if (!job.ok()) return job.status();
  return (*job)->record;
}

std::vector<JobRecord> JobRunner::List(const JobFilter& filter, int64_t before, size_t limit) const {
  absl::MutexLock lock(&mutex_);
  std::vector<JobRecord> page;
  auto end = before > 0 ? jobs_.lower_bound(before) : jobs_.end();
  for (auto it = std::make_reverse_iterator(end); it != jobs_.rend() && page.size() < limit; ++it) {
    const JobRecord& record = it->second->record;
    if (filter.state.has_value() && record.state != *filter.state) continue;
    if (filter.kind.has_value() && record.kind != *filter.kind) continue;
    page.push_back(record);
  }
  return page;
}

absl::StatusOr<JobRecord> JobRunner::Cancel(int64_t number) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Job*> found = FindLocked(number);
  if (!found.ok()) return found.status();
  Job& job = **found;
  if (IsTerminal(job.record.state)) {
    return absl::FailedPreconditionError(absl::StrCat(JobId(number), " already ended (", JobStateName(job.record.state),
                                                      "); there is nothing to cancel"));
  }
  job.cancel_requested = true;
  if (job.record.state == JobState::kQueued) {
    queue_.erase(std::find(queue_.begin(), queue_.end(), number));
    FinishLocked(job, absl::CancelledError("cancelled before it started"));
    DispatchLocked();
  } else {
    job.record.message = "cancelling";
    ChangedLocked(job, /*persist=*/false);
  }
  return job.record;
}

absl::StatusOr<int64_t> JobRunner::Watch(int64_t number, Listener listener) {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<Job*> job = FindLocked(number);
  if (!job.ok()) return job.status();
  listener((*job)->record);
  const int64_t token = next_watch_token_++;
  watchers_[token] = Watcher{number, std::move(listener)};
  return token;
}

void JobRunner::Unwatch(int64_t token) {
  absl::MutexLock lock(&mutex_);
  watchers_.erase(token);
}

}  // namespace deltaserve::control
