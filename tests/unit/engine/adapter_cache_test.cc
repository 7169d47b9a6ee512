// AdapterCache on small synthetic adapters: the device budget holds three, eviction is LRU
// among idle unpinned adapters, running and pinned adapters stay, a cold adapter is read once,
// host overflow drops to disk and is re-read from there, deleting frees bytes (as the observer
// sees them), and budgets and failed loads are reported.
#include "server/engine/adapter_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "server/common/clock.h"

namespace deltaserve::engine {
namespace {

constexpr int64_t kRank = 4;
constexpr int64_t kFeatures = 16;
// a [4, 16] + b [16, 4] in float32.
constexpr int64_t kAdapterBytes = 2 * kRank * kFeatures * 4;

std::shared_ptr<const deltas::DeltaSet> SmallAdapter(float value) {
  auto set = std::make_shared<deltas::DeltaSet>(1);
  set->Add(0, model::Projection::kQuery,
           {at::full({kRank, kFeatures}, value), at::full({kFeatures, kRank}, value), 1.0});
  return set;
}

// Settled: the loader has acted on everything asked of it so far. What has not happened by
// then does not happen later on its own, so tests can assert on absence without sleeping.
bool Settled(const AdapterCache& cache) { return cache.AwaitLoaderIdle(absl::Seconds(20)); }

class RecordingObserver : public EngineObserver {
 public:
  void OnAdapterResidency(const AdapterResidency& residency) override {
    absl::MutexLock lock(&mutex_);
    residency_ = residency;
  }
  void OnAdapterLoad(AdapterTier from, double seconds) override { ++loads; }
  void OnAdapterEviction(AdapterTier from) override { ++evictions; }
  AdapterResidency residency() {
    absl::MutexLock lock(&mutex_);
    return residency_;
  }
  std::atomic<int> loads{0}, evictions{0};

 private:
  absl::Mutex mutex_;
  AdapterResidency residency_;
};

class AdapterCacheTest : public ::testing::Test {
 protected:
  // A cache whose device holds three adapters and whose host holds `host_adapters`; its reader
  // serves path "v<value>" as SmallAdapter(value), counting reads, and waits for
  // release_reads_ when block_reads_ is set.
  std::unique_ptr<AdapterCache> MakeCache(int64_t host_adapters = 8, common::Clock* clock = nullptr) {
    AdapterCacheOptions options;
    options.clock = clock;
    options.device_budget_bytes = 3 * kAdapterBytes;
    options.host_budget_bytes = host_adapters * kAdapterBytes;
    options.read = [this](const std::string& path) -> absl::StatusOr<deltas::DeltaSet> {
      ++reads_;
      if (block_reads_) {
        if (!read_started_.HasBeenNotified()) read_started_.Notify();
        release_reads_.WaitForNotification();
      }
      if (path.empty() || path[0] != 'v') return absl::NotFoundError("no such adapter: " + path);
      return *SmallAdapter(std::stof(path.substr(1)));
    };
    return std::make_unique<AdapterCache>(options, &observer_);
  }

  static AdapterTier TierOf(const AdapterCache& cache, uint64_t id) { return cache.Info(id)->tier; }

  // Asks for `id` and waits until it is on the device.
  static bool Load(AdapterCache& cache, uint64_t id) {
    cache.Want({id});
    return Settled(cache) && TierOf(cache, id) == AdapterTier::kDevice;
  }

  // Uses an adapter as one request would: on the device, held while running, then released.
  static void Touch(AdapterCache& cache, uint64_t id) {
    ASSERT_NE(cache.AcquireResident(id), nullptr);
    cache.ReleaseRunning(id);
  }

  std::atomic<int> reads_{0};
  std::atomic<bool> block_reads_{false};
  absl::Notification read_started_, release_reads_;
  RecordingObserver observer_;
};

TEST_F(AdapterCacheTest, EvictsTheLeastRecentlyUsedIdleAdapter) {
  auto cache = MakeCache();
  uint64_t a = *cache->Add("v1", SmallAdapter(1));
  uint64_t b = *cache->Add("v2", SmallAdapter(2));
  uint64_t c = *cache->Add("v3", SmallAdapter(3));
  uint64_t d = *cache->Add("v4", SmallAdapter(4));  // no room left on the device
  EXPECT_EQ(TierOf(*cache, a), AdapterTier::kDevice);
  EXPECT_EQ(TierOf(*cache, d), AdapterTier::kHost);
  EXPECT_EQ(cache->AcquireResident(d), nullptr);

  Touch(*cache, a);  // now b is the least recently used
  ASSERT_TRUE(Load(*cache, d));
  EXPECT_EQ(TierOf(*cache, b), AdapterTier::kHost);
  EXPECT_EQ(TierOf(*cache, a), AdapterTier::kDevice);
  EXPECT_EQ(TierOf(*cache, c), AdapterTier::kDevice);

  Touch(*cache, a);
  Touch(*cache, d);  // c is next
  ASSERT_TRUE(Load(*cache, b));
  EXPECT_EQ(TierOf(*cache, c), AdapterTier::kHost);
  EXPECT_EQ(observer_.loads, 2);
  EXPECT_EQ(observer_.evictions, 2);
  EXPECT_EQ(reads_, 0) << "host-tier adapters need no disk read";

  // The device deltas are the adapter's own values.
  auto deltas = cache->AcquireResident(b);
  ASSERT_NE(deltas, nullptr);
  EXPECT_EQ(deltas->Factors(0, model::Projection::kQuery)[0].a[0][0].item<float>(), 2.0f);
  cache->ReleaseRunning(b);
}

TEST_F(AdapterCacheTest, PinnedAndRunningAdaptersAreNeverEvicted) {
  auto cache = MakeCache();
  uint64_t a = *cache->Add("v1", SmallAdapter(1));
  uint64_t b = *cache->Add("v2", SmallAdapter(2));
  uint64_t c = *cache->Add("v3", SmallAdapter(3));
  uint64_t d = *cache->Add("v4", SmallAdapter(4));
  uint64_t e = *cache->Add("v5", SmallAdapter(5));
  ASSERT_TRUE(cache->Pin(a).ok());  // a is the least recently used, but pinned
  auto running = cache->AcquireResident(b);  // b runs
  ASSERT_NE(running, nullptr);
  ASSERT_TRUE(Load(*cache, d));
  EXPECT_EQ(TierOf(*cache, c), AdapterTier::kHost) << "the only idle unpinned adapter goes";
  EXPECT_EQ(TierOf(*cache, a), AdapterTier::kDevice);
  EXPECT_EQ(TierOf(*cache, b), AdapterTier::kDevice);

  // With d running too, nothing may make room for e.
  ASSERT_NE(cache->AcquireResident(d), nullptr);
  cache->Want({e});
  ASSERT_TRUE(Settled(*cache));
  EXPECT_EQ(TierOf(*cache, e), AdapterTier::kHost);
  // When b's request finishes, b makes room.
  running.reset();
  cache->ReleaseRunning(b);
  ASSERT_TRUE(Settled(*cache));
  EXPECT_EQ(TierOf(*cache, e), AdapterTier::kDevice);
  EXPECT_EQ(TierOf(*cache, b), AdapterTier::kHost);
  EXPECT_EQ(TierOf(*cache, a), AdapterTier::kDevice);
  EXPECT_EQ(TierOf(*cache, d), AdapterTier::kDevice);
}

// The engine asks for an older waiting request's adapter (d, not loaded) before it admits a
// younger one: the younger may not start running the one idle adapter that d's load must evict.
TEST_F(AdapterCacheTest, AYoungerRequestDoesNotTakeTheRoomOfAnOlderLoad) {
  auto cache = MakeCache();
  uint64_t a = *cache->Add("v1", SmallAdapter(1));
  uint64_t b = *cache->Add("v2", SmallAdapter(2));
  uint64_t c = *cache->Add("v3", SmallAdapter(3));
  uint64_t d = *cache->Add("v4", SmallAdapter(4));
  ASSERT_EQ(TierOf(*cache, d), AdapterTier::kHost);
  ASSERT_NE(cache->AcquireResident(a), nullptr);
  ASSERT_NE(cache->AcquireResident(b), nullptr);
  EXPECT_TRUE(cache->CanMakeRoomFor(d)) << "c is idle: d can take its place";
  EXPECT_EQ(cache->AcquireResident(c, /*keep_room_for=*/d), nullptr) << "c is the room d needs";
  EXPECT_EQ(cache->Info(c)->running, 0);
  EXPECT_NE(cache->AcquireResident(a, /*keep_room_for=*/d), nullptr) << "a runs already: no room changes hands";
  cache->ReleaseRunning(a);
  // With nobody waiting for d, c may run; then d has to wait for room.
  ASSERT_NE(cache->AcquireResident(c), nullptr);
  EXPECT_FALSE(cache->CanMakeRoomFor(d));
  EXPECT_TRUE(cache->CanMakeRoomFor(c)) << "a resident adapter needs no room";
  // Once c's request ends, d loads in c's place.
  cache->ReleaseRunning(c);
  ASSERT_TRUE(Load(*cache, d));
  EXPECT_EQ(TierOf(*cache, c), AdapterTier::kHost);
  for (uint64_t id : {a, b}) cache->ReleaseRunning(id);
}

TEST_F(AdapterCacheTest, PinningLoadsInTheBackgroundAndIsBoundedByTheBudget) {
  auto cache = MakeCache();
  std::vector<uint64_t> ids;
  for (int i = 1; i <= 4; ++i) ids.push_back(*cache->Add("v" + std::to_string(i), SmallAdapter(i)));
  ASSERT_EQ(TierOf(*cache, ids[3]), AdapterTier::kHost);
  ASSERT_TRUE(cache->Pin(ids[3]).ok());
  ASSERT_TRUE(Settled(*cache));
  ASSERT_EQ(TierOf(*cache, ids[3]), AdapterTier::kDevice);
  ASSERT_TRUE(cache->Pin(ids[2]).ok());
  // A third pin would leave no room to load any other adapter.
  absl::Status third = cache->Pin(ids[1]);
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted) << third;
  ASSERT_TRUE(cache->Unpin(ids[2]).ok());
  EXPECT_TRUE(cache->Pin(ids[1]).ok());
  EXPECT_TRUE(cache->Info(ids[1])->pinned);
  EXPECT_FALSE(cache->Info(ids[2])->pinned);
}

TEST_F(AdapterCacheTest, ConcurrentRequestsForOneColdAdapterReadItOnce) {
  auto cache = MakeCache(/*host_adapters=*/0);
  block_reads_ = true;
  uint64_t cold = *cache->Add("v7", nullptr);  // known only by its directory
  EXPECT_EQ(TierOf(*cache, cold), AdapterTier::kDisk);
  ASSERT_TRUE(cache->AddUser(cold).ok());
  ASSERT_TRUE(cache->AddUser(cold).ok());
  cache->Want({cold});
  ASSERT_TRUE(read_started_.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_TRUE(cache->Info(cold)->loading);
  cache->Want({cold, cold});  // the engine asking again while the load runs
  release_reads_.Notify();
  ASSERT_TRUE(Settled(*cache));
  EXPECT_EQ(TierOf(*cache, cold), AdapterTier::kDevice);
  EXPECT_EQ(reads_, 1);
  EXPECT_EQ(cache->Info(cold)->users, 2);
}

TEST_F(AdapterCacheTest, HostOverflowDropsToDiskAndIsReadBackFromThere) {
  auto cache = MakeCache(/*host_adapters=*/1);
  std::vector<uint64_t> ids;
  for (int i = 1; i <= 5; ++i) ids.push_back(*cache->Add("v" + std::to_string(i), SmallAdapter(i)));
  // Three on the device; the host holds one: the older of the last two went to disk.
  EXPECT_EQ(TierOf(*cache, ids[3]), AdapterTier::kDisk);
  EXPECT_EQ(TierOf(*cache, ids[4]), AdapterTier::kHost);
  AdapterResidency residency = cache->Residency();
  EXPECT_EQ(residency.count[0], 3);
  EXPECT_EQ(residency.count[1], 1);
  EXPECT_EQ(residency.count[2], 1);
  ASSERT_TRUE(Load(*cache, ids[3]));
  EXPECT_EQ(reads_, 1);
  auto deltas = cache->AcquireResident(ids[3]);
  EXPECT_EQ(deltas->Factors(0, model::Projection::kQuery)[0].b[0][0].item<float>(), 4.0f);
  cache->ReleaseRunning(ids[3]);
}

TEST_F(AdapterCacheTest, RemoveFreesBytesAndIsRefusedWhileInUse) {
  auto cache = MakeCache();
  uint64_t a = *cache->Add("v1", SmallAdapter(1));
  uint64_t b = *cache->Add("v2", SmallAdapter(2));
  EXPECT_EQ(observer_.residency().bytes[0], 2 * kAdapterBytes);
  ASSERT_TRUE(cache->AddUser(a).ok());
  absl::Status in_use = cache->Remove(a);
  EXPECT_EQ(in_use.code(), absl::StatusCode::kFailedPrecondition) << in_use;
  cache->ReleaseUser(a);
  ASSERT_TRUE(cache->Remove(a).ok());
  EXPECT_EQ(observer_.residency().bytes[0], kAdapterBytes);
  EXPECT_EQ(observer_.residency().count[0], 1);
  EXPECT_EQ(cache->AcquireResident(a), nullptr);
  EXPECT_EQ(cache->AddUser(a).code(), absl::StatusCode::kNotFound);
  // The freed room takes a new adapter without evicting b.
  uint64_t c = *cache->Add("v3", SmallAdapter(3));
  uint64_t d = *cache->Add("v4", SmallAdapter(4));
  EXPECT_EQ(TierOf(*cache, b), AdapterTier::kDevice);
  EXPECT_EQ(TierOf(*cache, c), AdapterTier::kDevice);
  EXPECT_EQ(TierOf(*cache, d), AdapterTier::kDevice);
}

// A drain waits, on the cache's clock, for the adapter's last request to end: removed then, or
// kept (FAILED_PRECONDITION) once the deadline passes with requests still on it.
TEST_F(AdapterCacheTest, RemoveWhenUnusedWaitsForTheLastRequestUntilTheDeadline) {
  common::ManualClock clock;
  auto cache = MakeCache(/*host_adapters=*/8, &clock);
  const uint64_t drained = *cache->Add("v1", SmallAdapter(1));
  ASSERT_TRUE(cache->AddUser(drained).ok());
  absl::Status removed = absl::UnknownError("not yet");
  std::thread remover([&] { removed = cache->RemoveWhenUnused(drained, clock.Now() + absl::Seconds(30)); });
  ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));
  clock.Advance(absl::Seconds(29));  // not yet the deadline: still waiting
  ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));
  cache->ReleaseUser(drained);
  remover.join();
  EXPECT_TRUE(removed.ok()) << removed;
  EXPECT_EQ(cache->Info(drained).status().code(), absl::StatusCode::kNotFound);

  const uint64_t busy = *cache->Add("v2", SmallAdapter(2));
  ASSERT_TRUE(cache->AddUser(busy).ok());
  std::thread late([&] { removed = cache->RemoveWhenUnused(busy, clock.Now() + absl::Seconds(30)); });
  ASSERT_TRUE(clock.AwaitWaiters(1, absl::Seconds(20)));
  clock.Advance(absl::Seconds(30));
  late.join();
  EXPECT_EQ(removed.code(), absl::StatusCode::kFailedPrecondition) << removed;
  EXPECT_TRUE(cache->Info(busy).ok()) << "kept while its request runs";
  cache->ReleaseUser(busy);
  EXPECT_TRUE(cache->RemoveWhenUnused(busy, absl::InfinitePast()).ok());
}

TEST_F(AdapterCacheTest, ReportsFailedLoadsAndOversizedAdapters) {
  auto cache = MakeCache(/*host_adapters=*/0);
  uint64_t broken = *cache->Add("missing", nullptr);
  cache->Want({broken});
  ASSERT_TRUE(Settled(*cache)) << "a failed load is not retried in a loop while still wanted";
  std::vector<std::pair<uint64_t, absl::Status>> failures = cache->TakeLoadFailures();
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_EQ(failures[0].first, broken);
  EXPECT_NE(failures[0].second.message().find("no such adapter"), std::string::npos);
  EXPECT_EQ(TierOf(*cache, broken), AdapterTier::kDisk);
  // Not retried while still wanted; retried once newly wanted again.
  EXPECT_EQ(reads_, 1);
  cache->Want({});
  cache->Want({broken});
  ASSERT_TRUE(Settled(*cache));
  EXPECT_EQ(reads_, 2);
  EXPECT_EQ(cache->TakeLoadFailures().size(), 1u);

  auto big = std::make_shared<deltas::DeltaSet>(1);
  big->Add(0, model::Projection::kQuery, {at::zeros({64, kFeatures}), at::zeros({kFeatures, 64}), 1.0});
  absl::StatusOr<uint64_t> refused = cache->Add("big", big);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("--adapter-cache-bytes"), std::string::npos);
}

}  // namespace
}  // namespace deltaserve::engine
