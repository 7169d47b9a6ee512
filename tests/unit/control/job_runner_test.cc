// JobRunner with stand-in job bodies: states and progress as watchers see them, failures with
// their codes, cancellation of queued and running jobs, idempotency keys, the memory budget,
// what a restart makes of the rows a previous process left, and Stop.
#include "server/control/job_runner.h"

#include <atomic>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "server/common/file_util.h"
#include "tests/support/test_models.h"

namespace deltaserve::control {
namespace {

constexpr const char* kKind = "TEST";

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

// WaitForState polls until the job reaches `state` (or 20 s pass) and returns its record.
JobRecord WaitForState(JobRunner& runner, int64_t number, const std::string& state) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  absl::StatusOr<JobRecord> record = runner.Get(number);
  while (record.ok() && record->state != state && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(2));
    record = runner.Get(number);
  }
  EXPECT_TRUE(record.ok());
  EXPECT_EQ(record->state, state);
  return *record;
}

// A body that steps until cancelled.
absl::Status StepUntilCancelled(JobContext& context) {
  for (int i = 0; i < 20000; ++i) {
    absl::Status step = context.Step(0.1, "working");
    if (!step.ok()) return step;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return absl::DeadlineExceededError("never cancelled");
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
  EXPECT_EQ(job->state, "QUEUED");
  EXPECT_GT(job->created_unix_nanos, 0);

  absl::Mutex mutex;
  std::vector<JobRecord> seen;
  auto token = runner->Watch(job->number, [&](const JobRecord& record) {
    absl::MutexLock lock(&mutex);
    seen.push_back(record);
  });
  ASSERT_TRUE(token.ok());
  go.Notify();
  JobRecord done = WaitForState(*runner, job->number, "SUCCEEDED");
  runner->Unwatch(*token);
  EXPECT_EQ(done.progress, 1.0);
  EXPECT_GT(done.started_unix_nanos, 0);
  EXPECT_GE(done.finished_unix_nanos, done.started_unix_nanos);

  absl::MutexLock lock(&mutex);
  ASSERT_GE(seen.size(), 3u);
  EXPECT_EQ(seen.back().state, "SUCCEEDED");
  double progress = 0;
  bool saw_quarter = false;
  for (const JobRecord& record : seen) {
    EXPECT_GE(record.progress, progress) << "progress never goes back";
    progress = record.progress;
    saw_quarter |= record.message == "a quarter" && record.state == "RUNNING";
  }
  EXPECT_TRUE(saw_quarter);
  auto rows = store->ListJobs();
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].state, "SUCCEEDED");
  EXPECT_EQ((*rows)[0].output_variant, "out");
}

TEST(JobRunnerTest, AFailedJobKeepsItsErrorAndCode) {
  const std::string directory = testing::MakeTempDir("jobs-fail");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get());
  auto job = runner->Submit(Submission([](JobContext&) { return absl::ResourceExhaustedError("too big"); }));
  ASSERT_TRUE(job.ok());
  JobRecord failed = WaitForState(*runner, job->number, "FAILED");
  EXPECT_EQ(failed.error, "too big");
  EXPECT_EQ(failed.error_code, "RESOURCE_EXHAUSTED");
  auto rows = store->ListJobs();
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ((*rows)[0].error_code, "RESOURCE_EXHAUSTED");
}

TEST(JobRunnerTest, CancelEndsAQueuedJobAtOnceAndARunningOneAtItsNextStep) {
  const std::string directory = testing::MakeTempDir("jobs-cancel");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get());  // one worker
  auto running = runner->Submit(Submission(StepUntilCancelled));
  std::atomic<bool> queued_ran{false};
  auto queued = runner->Submit(Submission([&](JobContext&) {
    queued_ran = true;
    return absl::OkStatus();
  }));
  ASSERT_TRUE(running.ok() && queued.ok());
  WaitForState(*runner, running->number, "RUNNING");

  auto cancelled = runner->Cancel(queued->number);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state, "CANCELLED");
  EXPECT_EQ(cancelled->started_unix_nanos, 0);
  ASSERT_TRUE(runner->Cancel(running->number).ok());
  WaitForState(*runner, running->number, "CANCELLED");
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
    WaitForState(*runner, first_number, "SUCCEEDED");
  }
  auto runner = StartRunner(store.get());
  EXPECT_TRUE(runner->HasIdempotencyKey("key-1"));
  auto again = runner->Submit(Submission([](JobContext&) { return absl::OkStatus(); }, "a", 0, "key-1", R"({"x":1})"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->number, first_number);
  EXPECT_EQ(again->state, "SUCCEEDED");
}

TEST(JobRunnerTest, TwoUnfinishedJobsMayNotProduceOneVariant) {
  const std::string directory = testing::MakeTempDir("jobs-output");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get());
  auto first = runner->Submit(Submission(StepUntilCancelled, "same"));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(runner->Submit(Submission(StepUntilCancelled, "same")).status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(runner->Cancel(first->number).ok());
  WaitForState(*runner, first->number, "CANCELLED");
  auto second = runner->Submit(Submission([](JobContext&) { return absl::OkStatus(); }, "same"));
  EXPECT_TRUE(second.ok()) << "the output is free again once the first job ended";
}

// Runs two jobs of `each` bytes on two workers under a budget of 100 and returns how many ran
// at once at most.
int MostAtOnce(int64_t each) {
  const std::string directory = testing::MakeTempDir("jobs-memory");
  auto store = OpenStore(directory);
  JobRunnerOptions options;
  options.workers = 2;
  options.memory_bytes = 100;
  auto runner = StartRunner(store.get(), options);
  std::atomic<int> now{0}, most{0};
  auto body = [&](JobContext&) {
    most = std::max(most.load(), ++now);
    // Long enough for the other job to start if the budget lets it.
    const absl::Time until = absl::Now() + absl::Milliseconds(300);
    while (absl::Now() < until && most.load() < 2) absl::SleepFor(absl::Milliseconds(1));
    --now;
    return absl::OkStatus();
  };
  auto a = runner->Submit(Submission(body, "", each));
  auto b = runner->Submit(Submission(body, "", each));
  EXPECT_TRUE(a.ok() && b.ok());
  WaitForState(*runner, a->number, "SUCCEEDED");
  WaitForState(*runner, b->number, "SUCCEEDED");
  return most.load();
}

TEST(JobRunnerTest, RunningJobsStayWithinTheMemoryBudget) {
  EXPECT_EQ(MostAtOnce(60), 1) << "60 + 60 exceeds 100: the second job waits";
  EXPECT_EQ(MostAtOnce(40), 2) << "40 + 40 fits: both run";

  const std::string directory = testing::MakeTempDir("jobs-too-big");
  auto store = OpenStore(directory);
  JobRunnerOptions options;
  options.memory_bytes = 100;
  auto runner = StartRunner(store.get(), options);
  auto refused = runner->Submit(Submission([](JobContext&) { return absl::OkStatus(); }, "", 101));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("--job-memory-bytes"), std::string::npos);
  auto rows = store->ListJobs();
  ASSERT_TRUE(rows.ok());
  EXPECT_TRUE(rows->empty()) << "a refused job leaves no row";
}

TEST(JobRunnerTest, ARestartFailsInterruptedJobsResumesQueuedOnesAndRecognisesPublishedOutputs) {
  const std::string directory = testing::MakeTempDir("jobs-restart");
  auto store = OpenStore(directory);
  auto row = [&](const std::string& state, const std::string& output, int64_t memory = 0) {
    JobRecord record;
    record.kind = kKind;
    record.state = state;
    record.output_variant = output;
    record.memory_bytes = memory;
    EXPECT_TRUE(store->InsertJob(record).ok());
    return record.number;
  };
  const int64_t interrupted = row("RUNNING", "lost");
  const int64_t published = row("RUNNING", "made-it");
  const int64_t queued = row("QUEUED", "later");
  const int64_t too_big = row("QUEUED", "huge", 1000);
  const int64_t finished = row("SUCCEEDED", "old");

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
  EXPECT_EQ(failed.state, "FAILED");
  EXPECT_NE(failed.error.find("interrupted"), std::string::npos);
  EXPECT_EQ(failed.error_code, "ABORTED");
  EXPECT_EQ(runner->Get(published)->state, "SUCCEEDED");
  EXPECT_EQ(runner->Get(finished)->state, "SUCCEEDED");
  JobRecord refused = *runner->Get(too_big);
  EXPECT_EQ(refused.state, "FAILED");
  EXPECT_EQ(refused.error_code, "RESOURCE_EXHAUSTED");
  WaitForState(*runner, queued, "SUCCEEDED");
  EXPECT_EQ(resumed_ran.load(), 1);
  // The outcome is durable.
  auto rows = store->ListJobs();
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ((*rows)[0].state, "FAILED");
  EXPECT_EQ((*rows)[1].state, "SUCCEEDED");
}

TEST(JobRunnerTest, StopInterruptsRunningJobsAndLeavesQueuedOnesForTheNextStart) {
  const std::string directory = testing::MakeTempDir("jobs-stop");
  auto store = OpenStore(directory);
  auto runner = StartRunner(store.get());
  auto running = runner->Submit(Submission(StepUntilCancelled));
  auto queued = runner->Submit(Submission([](JobContext&) { return absl::OkStatus(); }));
  ASSERT_TRUE(running.ok() && queued.ok());
  WaitForState(*runner, running->number, "RUNNING");
  runner->Stop();
  EXPECT_EQ(runner->Get(running->number)->state, "FAILED");
  EXPECT_EQ(runner->Get(running->number)->error_code, "ABORTED");
  EXPECT_EQ(runner->Submit(Submission([](JobContext&) { return absl::OkStatus(); })).status().code(),
            absl::StatusCode::kUnavailable);
  auto rows = store->ListJobs();
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ((*rows)[1].state, "QUEUED");
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
  WaitForState(*runner, numbers.back(), "SUCCEEDED");
  std::vector<JobRecord> page = runner->List({}, 0, 2);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].number, numbers[4]);
  EXPECT_EQ(page[1].number, numbers[3]);
  page = runner->List({}, page.back().number, 10);
  ASSERT_EQ(page.size(), 3u);
  EXPECT_EQ(page[2].number, numbers[0]);
  page = runner->List({"FAILED", ""}, 0, 10);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].number, numbers[3]);
  EXPECT_TRUE(runner->List({"", "OTHER"}, 0, 10).empty());
}

}  // namespace
}  // namespace deltaserve::control
