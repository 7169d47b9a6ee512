#include "server/common/clock.h"

#include "absl/time/clock.h"

namespace deltaserve::common {
namespace {

class SystemClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  void SleepUntil(absl::Time deadline) override {
    const absl::Duration left = deadline - absl::Now();
    if (left > absl::ZeroDuration()) absl::SleepFor(left);
  }
  bool AwaitWithDeadline(absl::Mutex* mutex, const absl::Condition& condition, absl::Time deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    return mutex->AwaitWithDeadline(condition, deadline);
  }
};

// How often a ManualClock waiter looks at the clock again. Short, so tests stay quick; it is the
// only real time a manual wait spends.
constexpr absl::Duration kManualPoll = absl::Milliseconds(1);

}  // namespace

Clock* RealClock() {
  static SystemClock* const clock = new SystemClock();
  return clock;
}

absl::Time ManualClock::Now() const {
  absl::MutexLock lock(&mutex_);
  return now_;
}

void ManualClock::Advance(absl::Duration duration) {
  absl::MutexLock lock(&mutex_);
  now_ += duration;
}

int64_t ManualClock::Waiters() const {
  absl::MutexLock lock(&mutex_);
  return waiters_;
}

bool ManualClock::AwaitWaiters(int64_t count, absl::Duration real_timeout) const {
  absl::MutexLock lock(&mutex_);
  auto enough = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return waiters_ >= count; };
  return mutex_.AwaitWithTimeout(absl::Condition(&enough), real_timeout);
}

void ManualClock::SleepUntil(absl::Time deadline) {
  absl::MutexLock lock(&mutex_);
  ++waiters_;
  auto passed = [this, deadline]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return now_ >= deadline; };
  mutex_.Await(absl::Condition(&passed));  // Advance takes mutex_: its release re-checks this
  --waiters_;
}

bool ManualClock::AwaitWithDeadline(absl::Mutex* mutex, const absl::Condition& condition, absl::Time deadline) {
  {
    absl::MutexLock lock(&mutex_);
    ++waiters_;
  }
  bool holds = condition.Eval();
  // The caller's mutex guards the condition, this clock's the time: wait on the first in short
  // real-time slices and look at the second between them.
  while (!holds && Now() < deadline) holds = mutex->AwaitWithTimeout(condition, kManualPoll);
  absl::MutexLock lock(&mutex_);
  --waiters_;
  return holds;
}

}  // namespace deltaserve::common
