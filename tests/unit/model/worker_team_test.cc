// model::ParallelFor over a thread's worker team: every index runs exactly once, on more than
// one thread when the range allows, in ranges no shorter than the grain; sections after the
// workers have parked still run; nested sections run inline; a thread without a team still
// covers the range.
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "server/model/worker_team.h"
#include "tests/support/wait_until.h"

namespace deltaserve::model {
namespace {

// Runs ParallelFor over [0, n) and checks each index was visited once; returns the threads used
// (each member takes a fixed range, so the count is deterministic).
std::set<std::thread::id> CoverOnce(int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> visits(static_cast<size_t>(n));
  std::mutex mutex;
  std::set<std::thread::id> threads;
  ParallelFor(0, n, grain, [&](int64_t begin, int64_t end) {
    EXPECT_LE(begin, end);
    if (end < n) {
      EXPECT_GE(end - begin, grain);  // only the last range may be short
    }
    for (int64_t i = begin; i < end; ++i) visits[static_cast<size_t>(i)].fetch_add(1);
    std::lock_guard<std::mutex> lock(mutex);
    threads.insert(std::this_thread::get_id());
  });
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(visits[static_cast<size_t>(i)].load(), 1) << "index " << i;
  return threads;
}

TEST(WorkerTeamTest, EveryIndexRunsOnceAcrossTheTeam) {
  std::thread owner([] {
    SetWorkerTeamOfThisThread(3);
    EXPECT_EQ(CoverOnce(1000, 1).size(), 3u);
    EXPECT_EQ(CoverOnce(7, 3).size(), 3u);   // ranges 3, 3, 1
    EXPECT_EQ(CoverOnce(5, 3).size(), 2u);   // two members suffice
    EXPECT_EQ(CoverOnce(2, 10).size(), 1u);  // below the grain: the caller alone
    CoverOnce(0, 1);
    SetWorkerTeamOfThisThread(1);
  });
  owner.join();
}

TEST(WorkerTeamTest, SectionsAfterTheWorkersParkStillRun) {
  std::thread owner([] {
    SetWorkerTeamOfThisThread(2);
    for (int round = 0; round < 3; ++round) {
      EXPECT_EQ(CoverOnce(64, 1).size(), 2u);
      ASSERT_TRUE(testing::WaitUntil([] { return ParkedWorkersOfThisThread() == 1; }));
    }
    // Many short sections back to back, as in a decode step.
    std::atomic<int64_t> total{0};
    for (int section = 0; section < 2000; ++section) {
      ParallelFor(0, 10, 1, [&](int64_t begin, int64_t end) { total.fetch_add(end - begin); });
    }
    EXPECT_EQ(total.load(), 20000);
  });
  owner.join();
}

TEST(WorkerTeamTest, NestedSectionsRunInline) {
  std::thread owner([] {
    SetWorkerTeamOfThisThread(2);
    std::atomic<int64_t> inner_total{0};
    ParallelFor(0, 2, 1, [&](int64_t begin, int64_t end) {
      const std::thread::id outer = std::this_thread::get_id();
      ParallelFor(0, 100, 1, [&](int64_t b, int64_t e) {
        EXPECT_EQ(std::this_thread::get_id(), outer);
        inner_total.fetch_add(e - b);
      });
    });
    EXPECT_EQ(inner_total.load(), 200);
  });
  owner.join();
}

TEST(WorkerTeamTest, AThreadWithoutATeamCoversTheRange) {
  std::thread owner([] { CoverOnce(100, 7); });
  owner.join();
}

}  // namespace
}  // namespace deltaserve::model
