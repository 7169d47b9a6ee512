// Clock: where the server reads the time and waits for it to pass. Everything that decides by
// time (request deadlines, step timing, quota refills, job pauses, drains, polling, shutdown
// grace) takes a Clock*, so tests can move time by hand instead of sleeping.
//   - RealClock(): absl::Now() and real waits; what production wires in. Never null, never
//     destroyed.
//   - ManualClock: time stands still until Advance() moves it; threads waiting on it wake when
//     it passes their deadline. Tests only.
// Waits take a deadline in the clock's own time. Thread-safe.
//   common::Clock* clock = common::RealClock();
//   absl::MutexLock lock(&mutex_);
//   clock->AwaitWithDeadline(&mutex_, absl::Condition(&done_), clock->Now() + absl::Seconds(5));
#pragma once

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace deltaserve::common {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // SleepUntil blocks the calling thread until Now() >= deadline.
  virtual void SleepUntil(absl::Time deadline) = 0;
  void SleepFor(absl::Duration duration) { SleepUntil(Now() + duration); }
  // AwaitWithDeadline: `mutex` is held by the caller; waits (releasing it meanwhile, as
  // absl::Mutex::Await does) until `condition` holds or Now() >= deadline. Returns whether the
  // condition holds.
  virtual bool AwaitWithDeadline(absl::Mutex* mutex, const absl::Condition& condition, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) = 0;
};

// RealClock: the process's one real clock.
Clock* RealClock();

// ManualClock: a clock for tests. It starts at `start` and moves only by Advance. A thread
// waiting on it for a deadline wakes once Advance passes the deadline (checked at least every
// millisecond of real time, so an Advance is seen without a lost wake-up). Waiters() counts the
// threads waiting for a deadline right now, so a test can move time only once the thread it
// means to wake is waiting.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1'800'000'000)) : now_(start) {}

  absl::Time Now() const override;
  void SleepUntil(absl::Time deadline) override;
  bool AwaitWithDeadline(absl::Mutex* mutex, const absl::Condition& condition, absl::Time deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex);

  void Advance(absl::Duration duration);
  int64_t Waiters() const;
  // AwaitWaiters blocks until at least `count` threads wait on the clock, or `real_timeout` of
  // real time passed; returns whether they do.
  bool AwaitWaiters(int64_t count, absl::Duration real_timeout) const;

 private:
  mutable absl::Mutex mutex_;
  absl::Time now_ ABSL_GUARDED_BY(mutex_);
  int64_t waiters_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace deltaserve::common
