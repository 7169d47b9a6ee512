// The manual clock: time moves only by Advance, and waiters wake when it passes their deadline
// (and not before); the real clock's waits end by condition or deadline.
#include "server/common/clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"

namespace deltaserve::common {
namespace {

TEST(ManualClockTest, TimeMovesOnlyByAdvance) {
  ManualClock clock(absl::FromUnixSeconds(100));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(100));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(100));
  clock.Advance(absl::Milliseconds(1500));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(100) + absl::Milliseconds(1500));
}

TEST(ManualClockTest, ASleeperWakesOnlyOnceTimePassesItsDeadline) {
  ManualClock clock;
  std::atomic<bool> woke{false};
  std::thread sleeper([&] {
    clock.SleepFor(absl::Seconds(10));
    woke = true;
  });
  ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));
  clock.Advance(absl::Seconds(9));
  // Still short of the deadline: the sleeper is still waiting on the clock.
  EXPECT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));
  EXPECT_FALSE(woke);
  clock.Advance(absl::Seconds(1));
  sleeper.join();
  EXPECT_TRUE(woke);
  EXPECT_EQ(clock.Waiters(), 0);
}

TEST(ManualClockTest, AwaitEndsByConditionOrByDeadline) {
  ManualClock clock;
  absl::Mutex mutex;
  bool done = false;
  // By condition: another thread sets it; the clock never moves.
  std::thread setter([&] {
    ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));
    absl::MutexLock lock(&mutex);
    done = true;
  });
  {
    absl::MutexLock lock(&mutex);
    EXPECT_TRUE(clock.AwaitWithDeadline(&mutex, absl::Condition(&done), clock.Now() + absl::Hours(1)));
  }
  setter.join();
  // By deadline: the condition never holds; the clock passes the deadline.
  bool never = false;
  std::atomic<bool> returned{false};
  bool result = true;
  std::thread waiter([&] {
    absl::MutexLock lock(&mutex);
    result = clock.AwaitWithDeadline(&mutex, absl::Condition(&never), clock.Now() + absl::Minutes(5));
    returned = true;
  });
  ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));
  EXPECT_FALSE(returned);
  clock.Advance(absl::Minutes(5));
  waiter.join();
  EXPECT_FALSE(result);
}

TEST(RealClockTest, AwaitReturnsAtOnceWhenTheConditionHoldsAndAtThePassedDeadlineOtherwise) {
  Clock* clock = RealClock();
  absl::Mutex mutex;
  bool yes = true, no = false;
  absl::MutexLock lock(&mutex);
  EXPECT_TRUE(clock->AwaitWithDeadline(&mutex, absl::Condition(&yes), clock->Now() + absl::Hours(1)));
  EXPECT_FALSE(clock->AwaitWithDeadline(&mutex, absl::Condition(&no), clock->Now() - absl::Seconds(1)));
  const absl::Time before = clock->Now();
  clock->SleepUntil(before - absl::Seconds(1));  // a past deadline does not sleep
  EXPECT_GE(clock->Now(), before);
}

}  // namespace
}  // namespace deltaserve::common
