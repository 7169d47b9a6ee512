// AdapterCache: where each registered adapter's deltas live — on the DEVICE, ready for the
// engine (at most device_budget_bytes), in HOST memory (at most host_budget_bytes), or only on
// DISK as its PEFT directory — and the loader thread that moves them. Each adapter is in exactly
// one tier. The engine never loads: it asks AcquireResident() before admitting a request, and
// tells Want() which adapters its waiting requests need, most urgent first; the loader brings
// those to the device one at a time (so two requests for one cold adapter cause one load).
//
// Eviction makes room on the device for the adapter being loaded. It never touches an adapter
// that a running request holds (AcquireResident .. ReleaseRunning) or a pinned one; it takes
// adapters nobody waits for first, least recently used first, then adapters wanted later than
// the one being loaded. Evicted adapters go to the host tier, whose own LRU drops adapters to
// disk (adapters with no directory stay in host memory). Invariant kept by Add and Pin: pinned
// bytes plus the largest unpinned adapter fit the device budget, so every adapter can always be
// loaded once running requests let go.
//
// Adapters are keyed by an id that Add never reuses, so a name registered again is a new entry.
// Thread-safe. Add copies deltas to the device on the caller's thread; everything else is quick.
//   ASSIGN_OR_RETURN(uint64_t id, cache.Add(path, host_deltas));
//   if (auto deltas = cache.AcquireResident(id)) { ...run...; cache.ReleaseRunning(id); }
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/common/clock.h"
#include "server/deltas/delta_set.h"
#include "server/engine/engine_observer.h"

namespace deltaserve::engine {

using AdapterReader = std::function<absl::StatusOr<deltas::DeltaSet>(const std::string& path)>;

struct AdapterCacheOptions {
  int64_t device_budget_bytes = int64_t{1} << 30;
  int64_t host_budget_bytes = int64_t{4} << 30;
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
  // Times loads for the observer; null = common::RealClock().
  common::Clock* clock = nullptr;
  // Reads an adapter directory into host memory (CPU, `dtype`); tests replace it.
  AdapterReader read;
};

struct AdapterInfo {
  AdapterTier tier = AdapterTier::kDisk;
  int64_t bytes = 0;
  bool pinned = false;
  bool loading = false;
  int64_t users = 0;    // accepted requests not finished (queued or running)
  int64_t running = 0;  // requests holding its device deltas
};

class AdapterCache {
 public:
  AdapterCache(AdapterCacheOptions options, EngineObserver* observer);
  ~AdapterCache();  // stops the loader thread
  AdapterCache(const AdapterCache&) = delete;
  AdapterCache& operator=(const AdapterCache&) = delete;

  // Add registers an adapter read from directory `path` ("" = it cannot be re-read, so it never
  // drops to disk) whose deltas `host` are on the CPU in the cache's dtype. It goes to the
  // device if there is free room, else to host memory. INVALID_ARGUMENT when it can never fit
  // the device budget next to the pinned adapters. `host` may be null: the adapter then starts
  // on disk and its size is known (and checked against nothing) only after its first load.
  // Returns its id (never 0).
  absl::StatusOr<uint64_t> Add(const std::string& path, std::shared_ptr<const deltas::DeltaSet> host);
  // Remove forgets an adapter and frees its memory: FAILED_PRECONDITION while requests use it.
  absl::Status Remove(uint64_t id);
  // RemoveWhenUnused waits until no request uses the adapter, or the clock reaches `deadline`
  // (FAILED_PRECONDITION then, the adapter kept), and removes it. InfinitePast() = Remove.
  absl::Status RemoveWhenUnused(uint64_t id, absl::Time deadline);
  // Pin keeps an adapter on the device (loading it in the background) until Unpin.
  // RESOURCE_EXHAUSTED when the pinned adapters would leave no room for the largest other one.
  absl::Status Pin(uint64_t id);
  absl::Status Unpin(uint64_t id);
  absl::StatusOr<AdapterInfo> Info(uint64_t id) const;
  AdapterResidency Residency() const;

  // The engine's side. AddUser counts an accepted request (NOT_FOUND once removed);
  // ReleaseUser when it finishes.
  absl::Status AddUser(uint64_t id);
  void ReleaseUser(uint64_t id);
  // AcquireResident returns the device deltas and counts a running request (the adapter stays
  // until ReleaseRunning), or null when the adapter is not on the device. `keep_room_for` (0 =
  // none) is an adapter an older waiting request needs loaded: the call also returns null when
  // running `id` would take the room that load must evict `id` for, so a younger request never
  // makes an older one's load impossible.
  std::shared_ptr<const deltas::DeltaSet> AcquireResident(uint64_t id, uint64_t keep_room_for = 0);
  // CanMakeRoomFor: `id` is on the device or loading, or the loader can load it now by evicting
  // adapters no running request holds. False means it waits until running requests let go; the
  // engine then admits no younger adapter request (they could keep the room forever).
  bool CanMakeRoomFor(uint64_t id) const;
  void ReleaseRunning(uint64_t id);
  // Want replaces the list of adapters waiting requests need, most urgent first (resident
  // ones too: they are then evicted last). Returns those of `ids` not on the device.
  std::vector<uint64_t> Want(std::vector<uint64_t> ids);
  // TakeLoadFailures returns the adapters whose load failed since the last call, with why. The
  // loader retries a failed adapter only when a later Want newly lists it (or Pin asks again),
  // so a broken adapter costs one attempt per burst of requests, not a retry loop.
  std::vector<std::pair<uint64_t, absl::Status>> TakeLoadFailures();
  // TakeRemoved returns the adapters removed since the last call (the engine drops their cached
  // prompt KV).
  std::vector<uint64_t> TakeRemoved();
  // SetLoadListener: called on the loader thread, with no lock held, after every load (done or
  // failed). Set it before the first Want.
  void SetLoadListener(std::function<void()> listener);
  // AwaitLoaderIdle blocks until the loader has acted on every change made so far and runs no
  // load, or until `real_timeout` passes; returns whether it is idle. Tests use it to assert
  // that something did not happen (an adapter that stays where it is) without sleeping.
  bool AwaitLoaderIdle(absl::Duration real_timeout) const;

 private:
  struct Entry {
    std::string path;
    int64_t bytes = 0;
    AdapterTier tier = AdapterTier::kDisk;
    std::shared_ptr<const deltas::DeltaSet> device;  // set iff tier == kDevice
    std::shared_ptr<const deltas::DeltaSet> host;    // set iff tier == kHost
    bool pinned = false;
    bool loading = false;  // the loader is bringing it to the device (its bytes are reserved)
    bool failed = false;   // the last load failed; not retried until newly wanted or pinned
    int64_t users = 0;
    int64_t running = 0;
    uint64_t last_used = 0;  // lru_tick_ when last used
  };

  void LoaderLoop();
  // NextLoadLocked picks the next adapter to load and evicts room for it; 0 when none can load.
  uint64_t NextLoadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool MakeDeviceRoomLocked(uint64_t for_id, int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void MakeHostRoomLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // MoveLocked puts an entry in `tier` holding `deltas` (null: on disk), keeping the per-tier
  // byte counts; the caller makes host room afterwards where needed.
  void MoveLocked(Entry& entry, AdapterTier tier, std::shared_ptr<const deltas::DeltaSet> deltas)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  Entry* FindLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  const Entry* FindLocked(uint64_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  static absl::Status NotInCache();
  absl::Status RemoveLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  AdapterResidency ResidencyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void PublishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  int64_t MaxUnpinnedBytesLocked(uint64_t except) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // RoomForLocked: CanMakeRoomFor(id) if adapter `without` could not be evicted.
  bool RoomForLocked(uint64_t id, uint64_t without) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::shared_ptr<const deltas::DeltaSet> ToHost(std::shared_ptr<const deltas::DeltaSet> device) const;

  const AdapterCacheOptions options_;
  EngineObserver* const observer_;
  common::Clock* const clock_;

  mutable absl::Mutex mutex_;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  uint64_t lru_tick_ ABSL_GUARDED_BY(mutex_) = 0;
  // Bytes on the device (including loads in flight, reserved) and in host memory.
  int64_t device_used_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t host_used_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t pinned_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
  std::vector<uint64_t> wanted_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::pair<uint64_t, absl::Status>> failures_ ABSL_GUARDED_BY(mutex_);
  std::vector<uint64_t> removed_ ABSL_GUARDED_BY(mutex_);
  // Bumped on every change that may let the loader make progress; the loader has acted on
  // every change up to changes_seen_ (and runs a load while load_in_flight_).
  uint64_t changes_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t changes_seen_ ABSL_GUARDED_BY(mutex_) = std::numeric_limits<uint64_t>::max();
  bool load_in_flight_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::function<void()> listener_ ABSL_GUARDED_BY(mutex_);
  std::thread loader_;
};

}  // namespace deltaserve::engine
