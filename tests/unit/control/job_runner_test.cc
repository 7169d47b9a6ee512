// JobRunner with stand-in job bodies: states and progress as watchers see them, failures with
// their codes, cancellation of queued and running jobs, idempotency keys, the memory budget,
// what a restart makes of the rows a previous process left, and Stop.
#include "server/control/job_runner.h"

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "server/common/clock.h"
#include "server/common/file_util.h"
#include "tests/support/test_models.h"

namespace deltaserve::control {
namespace {

constexpr JobKind kKind = JobKind::kMerge;

std::unique_ptr<CatalogStore> OpenStore(const std::string& directory) {
  auto store = CatalogStore::Open(common::JoinPath(directory, "catalog.db"));
  EXPECT_TRUE(store.ok()) << store.status();
  return std::move(*store);
}

std::unique_ptr<JobRunner> StartRunner(CatalogStore* store, JobRunnerOptions options = {},
                                       JobKindHandlers handlers = {}) {
  auto runner = JobRunner::Create(options, store);
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (!handlers.resume) handlers.resume = [](const JobRecord&) -> absl::StatusOr<JobBody> { return absl::UnknownError("none"); };
  if (!handlers.published) handlers.published = [](const JobRecord&) { return false; };
  (*runner)->RegisterKind(kKind, std::move(handlers));
  EXPECT_TRUE((*runner)->Start().ok());
  return std::move(*runner);
}

JobSubmission Submission(JobBody body, const std::string& output = "", int64_t memory = 0,
                         const std::string& key = "", const std::string& spec = "{}") {
  JobSubmission submission;
  submission.kind = kKind;
  submission.spec_json = spec;
  submission.output_variant = output;
  submission.idempotency_key = key;
  submission.memory_bytes = memory;
  submission.body = std::move(body);
  return submission;
}

// WaitForRecord waits (as a watcher, at most 20 s) until the job's record satisfies `done` and
// returns the record then; WaitForState until it reaches `state`.
JobRecord WaitForRecord(JobRunner& runner, int64_t number, const std::function<bool(const JobRecord&)>& done) {
  absl::Mutex mutex;
  bool reached = false;
  JobRecord record;
  absl::StatusOr<int64_t> token = runner.Watch(number, [&](const JobRecord& now) {
    absl::MutexLock lock(&mutex);
    if (reached || !done(now)) return;
    reached = true;
    record = now;
  });
  EXPECT_TRUE(token.ok()) << token.status();
  if (!token.ok()) return record;
  {
    absl::MutexLock lock(&mutex);
    mutex.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(20));
  }
  runner.Unwatch(*token);
  absl::MutexLock lock(&mutex);
  EXPECT_TRUE(reached) << "job " << number << " never got there; it is "
                       << runner.Get(number).value_or(JobRecord{}).state;
  return record;
}

JobRecord WaitForState(JobRunner& runner, int64_t number, JobState state) {
  return WaitForRecord(runner, number, [state](const JobRecord& record) { return record.state == state; });
}

// A runner whose step pause outlasts any test: a body's Step then waits until the job is
// cancelled or the runner stops, which end the pause at once.
JobRunnerOptions PausingOptions() {
  JobRunnerOptions options;
  options.step_pause = absl::Hours(1);
  return options;
}

// A body that steps until cancelled (or stopped); on a PausingOptions runner it waits in Step.
absl::Status StepUntilCancelled(JobContext& context) {
  while (true) {
    absl::Status step = context.Step(0.1, "working");
    if (!step.ok()) return step;
  }
}

TEST(JobIdTest, FormatsAndParses) {
  EXPECT_EQ(JobId(12), "job-12");
  EXPECT_EQ(*ParseJobId("job-12"), 12);
  for (const char* bad : {"", "job-", "job-0", "job-x", "12", "task-3"}) {
    EXPECT_EQ(ParseJobId(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(JobRunnerTest, WatchersSeeRunningProgressAndSuccessInOrderAndTheRowIsKept) {
  const std::string directory = testing::MakeTempDir("jobs-watch");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get());
  absl::Notification go;
  auto job = runner->Submit(Submission([&](JobContext& context) {
    go.WaitForNotification();
    absl::Status step = context.Step(0.25, "a quarter");
    if (step.ok()) step = context.Step(0.75, "three quarters");
    return step;
  }, "out"));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state, JobState::kQueued);
  EXPECT_GT(job->created_unix_nanos, 0);

  absl::Mutex mutex;
  std::vector<JobRecord> seen;
  auto token = runner->Watch(job->number, [&](const JobRecord& record) {
    absl::MutexLock lock(&mutex);
    seen.push_back(record);
  });
  ASSERT_TRUE(token.ok());
  go.Notify();
  JobRecord done = WaitForState(*runner, job->number, JobState::kSucceeded);
  runner->Unwatch(*token);
  EXPECT_EQ(done.progress, 1.0);
  EXPECT_GT(done.started_unix_nanos, 0);
  EXPECT_GE(done.finished_unix_nanos, done.started_unix_nanos);

  absl::MutexLock lock(&mutex);
  ASSERT_GE(seen.size(), 3u);
  EXPECT_EQ(seen.back().state, JobState::kSucceeded);
  double progress = 0;
  bool saw_quarter = false;
  for (const JobRecord& record : seen) {
    EXPECT_GE(record.progress, progress) << "progress never goes back";
    progress = record.progress;
    saw_quarter |= record.message == "a quarter" && record.state == JobState::kRunning;
  }
  EXPECT_TRUE(saw_quarter);
  auto rows = store->ListJobs();
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].state, JobState::kSucceeded);
  EXPECT_EQ((*rows)[0].output_variant, "out");
}

TEST(JobRunnerTest, AFailedJobKeepsItsErrorAndCode) {
  const std::string directory = testing::MakeTempDir("jobs-fail");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get());
  auto job = runner->Submit(Submission([](JobContext&) { return absl::ResourceExhaustedError("too big"); }));
  ASSERT_TRUE(job.ok());
  JobRecord failed = WaitForState(*runner, job->number, JobState::kFailed);
  EXPECT_EQ(failed.error, "too big");
  EXPECT_EQ(failed.error_code, "RESOURCE_EXHAUSTED");
  auto rows = store->ListJobs();
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ((*rows)[0].error_code, "RESOURCE_EXHAUSTED");
}

TEST(JobRunnerTest, CancelEndsAQueuedJobAtOnceAndARunningOneAtItsNextStep) {
  const std::string directory = testing::MakeTempDir("jobs-cancel");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get(), PausingOptions());  // one worker
  auto running = runner->Submit(Submission(StepUntilCancelled));
  std::atomic<bool> queued_ran{false};
  auto queued = runner->Submit(Submission([&](JobContext&) {
    queued_ran = true;
    return absl::OkStatus();
  }));
  ASSERT_TRUE(running.ok() && queued.ok());
  WaitForState(*runner, running->number, JobState::kRunning);

  auto cancelled = runner->Cancel(queued->number);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state, JobState::kCancelled);
  EXPECT_EQ(cancelled->started_unix_nanos, 0);
  ASSERT_TRUE(runner->Cancel(running->number).ok());
  WaitForState(*runner, running->number, JobState::kCancelled);
  EXPECT_FALSE(queued_ran);
  EXPECT_EQ(runner->Cancel(running->number).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(runner->Cancel(999).status().code(), absl::StatusCode::kNotFound);
}

TEST(JobRunnerTest, AnIdempotencyKeyReturnsTheFirstJobEvenAfterARestart) {
  const std::string directory = testing::MakeTempDir("jobs-key");
  auto store = OpenStore(directory);
  int64_t first_number = 0;
  {
    auto runner = StartRunner(store.get());
    auto body = [](JobContext&) { return absl::OkStatus(); };
    auto first = runner->Submit(Submission(body, "a", 0, "key-1", R"({"x":1})"));
    ASSERT_TRUE(first.ok());
    first_number = first->number;
    auto again = runner->Submit(Submission(body, "a", 0, "key-1", R"({"x":1})"));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->number, first_number);
    auto different = runner->Submit(Submission(body, "a", 0, "key-1", R"({"x":2})"));
    EXPECT_EQ(different.status().code(), absl::StatusCode::kAlreadyExists);
    EXPECT_NE(different.status().message().find("different request"), std::string::npos);
    WaitForState(*runner, first_number, JobState::kSucceeded);
  }
  auto runner = StartRunner(store.get());
  EXPECT_TRUE(runner->HasIdempotencyKey("key-1"));
  auto again = runner->Submit(Submission([](JobContext&) { return absl::OkStatus(); }, "a", 0, "key-1", R"({"x":1})"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->number, first_number);
  EXPECT_EQ(again->state, JobState::kSucceeded);
}

TEST(JobRunnerTest, TwoUnfinishedJobsMayNotProduceOneVariant) {
  const std::string directory = testing::MakeTempDir("jobs-output");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get(), PausingOptions());
  auto first = runner->Submit(Submission(StepUntilCancelled, "same"));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(runner->Submit(Submission(StepUntilCancelled, "same")).status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(runner->Cancel(first->number).ok());
  WaitForState(*runner, first->number, JobState::kCancelled);
  auto second = runner->Submit(Submission([](JobContext&) { return absl::OkStatus(); }, "same"));
  EXPECT_TRUE(second.ok()) << "the output is free again once the first job ended";
}

// Submits two jobs of `each` bytes to two workers under a budget of 100, while the first runs,
// and returns the second's state right after its Submit: the runner decides under its lock,
// so that state is final until the first job ends. Then lets both finish.
JobState SecondJobStateBesideTheFirst(int64_t each) {
  const std::string directory = testing::MakeTempDir("jobs-memory");
  auto store = OpenStore(directory);
  JobRunnerOptions options;
  options.workers = 2;
  options.memory_bytes = 100;
  auto runner = StartRunner(store.get(), options);
  absl::Notification release;
  auto body = [&](JobContext&) {
    EXPECT_TRUE(release.WaitForNotificationWithTimeout(absl::Seconds(60)));
    return absl::OkStatus();
  };
  auto a = runner->Submit(Submission(body, "", each));
  auto b = runner->Submit(Submission(body, "", each));
  EXPECT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(runner->Get(a->number)->state, JobState::kRunning);
  const JobState second = runner->Get(b->number)->state;
  release.Notify();
  const JobRecord first_done = WaitForState(*runner, a->number, JobState::kSucceeded);
  const JobRecord second_done = WaitForState(*runner, b->number, JobState::kSucceeded);
  if (second == JobState::kQueued) {
    EXPECT_GE(second_done.started_unix_nanos, first_done.finished_unix_nanos) << "it started once the first ended";
  }
  return second;
}

TEST(JobRunnerTest, RunningJobsStayWithinTheMemoryBudget) {
  EXPECT_EQ(SecondJobStateBesideTheFirst(60), JobState::kQueued) << "60 + 60 exceeds 100: the second job waits";
  EXPECT_EQ(SecondJobStateBesideTheFirst(40), JobState::kRunning) << "40 + 40 fits: both run";
}

TEST(JobRunnerTest, ARestartFailsInterruptedJobsResumesQueuedOnesAndRecognisesPublishedOutputs) {
  const std::string directory = testing::MakeTempDir("jobs-restart");
  auto store = OpenStore(directory);
  auto row = [&](JobState state, const std::string& output, int64_t memory = 0) {
    JobRecord record;
    record.kind = kKind;
    record.state = state;
    record.output_variant = output;
    record.memory_bytes = memory;
    EXPECT_TRUE(store->InsertJob(record).ok());
    return record.number;
  };
  const int64_t interrupted = row(JobState::kRunning, "lost");
  const int64_t published = row(JobState::kRunning, "made-it");
  const int64_t queued = row(JobState::kQueued, "later");
  const int64_t too_big = row(JobState::kQueued, "huge", 1000);
  const int64_t finished = row(JobState::kSucceeded, "old");

  JobKindHandlers handlers;
  std::atomic<int> resumed_ran{0};
  handlers.resume = [&](const JobRecord& record) -> absl::StatusOr<JobBody> {
    EXPECT_EQ(record.output_variant, "later");
    return JobBody([&](JobContext&) {
      ++resumed_ran;
      return absl::OkStatus();
    });
  };
  handlers.published = [](const JobRecord& record) { return record.output_variant == "made-it"; };
  JobRunnerOptions options;
  options.memory_bytes = 500;
  auto runner = StartRunner(store.get(), options, handlers);

  JobRecord failed = *runner->Get(interrupted);
  EXPECT_EQ(failed.state, JobState::kFailed);
  EXPECT_NE(failed.error.find("interrupted"), std::string::npos);
  EXPECT_EQ(failed.error_code, "ABORTED");
  EXPECT_EQ(runner->Get(published)->state, JobState::kSucceeded);
  EXPECT_EQ(runner->Get(finished)->state, JobState::kSucceeded);
  JobRecord refused = *runner->Get(too_big);
  EXPECT_EQ(refused.state, JobState::kFailed);
  EXPECT_EQ(refused.error_code, "RESOURCE_EXHAUSTED");
  WaitForState(*runner, queued, JobState::kSucceeded);
  EXPECT_EQ(resumed_ran.load(), 1);
  // The outcome is durable.
  auto rows = store->ListJobs();
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ((*rows)[0].state, JobState::kFailed);
  EXPECT_EQ((*rows)[1].state, JobState::kSucceeded);
}

TEST(JobRunnerTest, StopInterruptsRunningJobsAndLeavesQueuedOnesForTheNextStart) {
  const std::string directory = testing::MakeTempDir("jobs-stop");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get(), PausingOptions());
  auto running = runner->Submit(Submission(StepUntilCancelled));
  auto queued = runner->Submit(Submission([](JobContext&) { return absl::OkStatus(); }));
  ASSERT_TRUE(running.ok() && queued.ok());
  // Its body runs (it has stepped), not only its state: a job whose body never started would
  // go back to the queue.
  WaitForRecord(*runner, running->number, [](const JobRecord& record) { return record.message == "working"; });
  runner->Stop();
  EXPECT_EQ(runner->Get(running->number)->state, JobState::kFailed);
  EXPECT_EQ(runner->Get(running->number)->error_code, "ABORTED");
  EXPECT_EQ(runner->Submit(Submission([](JobContext&) { return absl::OkStatus(); })).status().code(),
            absl::StatusCode::kUnavailable);
  auto rows = store->ListJobs();
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ((*rows)[1].state, JobState::kQueued);
}

TEST(JobRunnerTest, ListsNewestFirstWithFiltersAndPages) {
  const std::string directory = testing::MakeTempDir("jobs-list");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get());
  std::vector<int64_t> numbers;
  for (int i = 0; i < 5; ++i) {
    auto job = runner->Submit(Submission([i](JobContext&) {
      return i % 2 == 0 ? absl::OkStatus() : absl::InternalError("odd");
    }));
    ASSERT_TRUE(job.ok());
    numbers.push_back(job->number);
  }
  WaitForState(*runner, numbers.back(), JobState::kSucceeded);
  std::vector<JobRecord> page = runner->List({}, 0, 2);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].number, numbers[4]);
  EXPECT_EQ(page[1].number, numbers[3]);
  page = runner->List({}, page.back().number, 10);
  ASSERT_EQ(page.size(), 3u);
  EXPECT_EQ(page[2].number, numbers[0]);
  page = runner->List({JobState::kFailed, std::nullopt}, 0, 10);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].number, numbers[3]);
  EXPECT_TRUE(runner->List({std::nullopt, JobKind::kStats}, 0, 10).empty());
}

}  // namespace
}  // namespace deltaserve::control

namespace deltaserve::control {
namespace {

// The step pause runs on the runner's clock: a job moves on only once the clock has passed the
// pause, and a cancel cuts a pause short. Timestamps come from the same clock.
TEST(JobRunnerTest, StepsPauseByTheRunnersClockAndACancelEndsThePause) {
  const std::string directory = testing::MakeTempDir("jobs-clock");
  auto store = OpenStore(directory);
  common::ManualClock clock;
  JobRunnerOptions options;
  options.clock = &clock;
  options.step_pause = absl::Seconds(10);
  auto runner = StartRunner(store.get(), options);
  auto two_steps = runner->Submit(Submission([](JobContext& context) {
    absl::Status step = context.Step(0.5, "half");
    if (step.ok()) step = context.Step(0.9, "nearly");
    return step;
  }));
  ASSERT_TRUE(two_steps.ok());
  EXPECT_EQ(two_steps->created_unix_nanos, absl::ToUnixNanos(clock.Now()));
  ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));  // pausing after the first step
  EXPECT_EQ(runner->Get(two_steps->number)->message, "half");
  clock.Advance(absl::Seconds(9));
  ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));
  EXPECT_EQ(runner->Get(two_steps->number)->message, "half") << "the pause is not over yet";
  clock.Advance(absl::Seconds(1));
  WaitForRecord(*runner, two_steps->number, [](const JobRecord& record) { return record.message == "nearly"; });
  ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));  // pausing after the second step
  clock.Advance(absl::Seconds(10));
  const JobRecord done = WaitForState(*runner, two_steps->number, JobState::kSucceeded);
  EXPECT_EQ(done.finished_unix_nanos, absl::ToUnixNanos(clock.Now()));

  auto cancelled = runner->Submit(Submission(StepUntilCancelled));
  ASSERT_TRUE(cancelled.ok());
  ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));
  ASSERT_TRUE(runner->Cancel(cancelled->number).ok());
  WaitForState(*runner, cancelled->number, JobState::kCancelled);  // the clock never moved
}

}  // namespace
}  // namespace deltaserve::control
