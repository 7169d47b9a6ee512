#include "server/engine/adapter_cache.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/deltas/cpu_low_rank.h"

namespace deltaserve::engine {

const char* AdapterTierName(AdapterTier tier) {
  switch (tier) {
    case AdapterTier::kDevice: return "device";
    case AdapterTier::kHost: return "host";
    case AdapterTier::kDisk: return "disk";
  }
  return "unknown";
}

AdapterCache::AdapterCache(AdapterCacheOptions options, EngineObserver* observer)
    : options_(std::move(options)), observer_(observer),
      clock_(options_.clock != nullptr ? options_.clock : common::RealClock()) {
  {
    absl::MutexLock lock(&mutex_);
    PublishLocked();
  }
  loader_ = std::thread([this] { LoaderLoop(); });
}

AdapterCache::~AdapterCache() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  loader_.join();
}

namespace {

// Copies deltas to `device`/`dtype`. Host deltas are on the CPU in the cache's dtype: for a CPU
// device they only take the serving layout (tensors shared where they have it already).
absl::StatusOr<std::shared_ptr<const deltas::DeltaSet>> Convert(
    std::shared_ptr<const deltas::DeltaSet> deltas, const at::Device& device, at::ScalarType dtype) {
  std::shared_ptr<const deltas::DeltaSet> converted;
  absl::Status status = common::CatchTorchErrors("copying adapter deltas", [&] {
    converted = std::make_shared<const deltas::DeltaSet>(device.is_cpu() ? deltas::ServingLayout(*deltas)
                                                                         : deltas->To(device, dtype));
  });
  if (!status.ok()) return status;
  return converted;
}

}  // namespace

std::shared_ptr<const deltas::DeltaSet> AdapterCache::ToHost(
    std::shared_ptr<const deltas::DeltaSet> device) const {
  absl::StatusOr<std::shared_ptr<const deltas::DeltaSet>> host =
      Convert(std::move(device), at::kCPU, options_.dtype);
  return host.ok() ? *host : nullptr;  // a failed copy leaves the adapter on disk only
}

absl::StatusOr<uint64_t> AdapterCache::Add(const std::string& path,
                                           std::shared_ptr<const deltas::DeltaSet> host) {
  const int64_t bytes = host != nullptr ? host->Bytes() : 0;
  if (host == nullptr && path.empty()) {
    return absl::InvalidArgumentError("an adapter needs its deltas or a directory to read them from");
  }
  uint64_t id;
  bool to_device = false;
  {
    absl::MutexLock lock(&mutex_);
    if (bytes + pinned_bytes_ > options_.device_budget_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the adapter takes ", bytes, " bytes but the device adapter cache (--adapter-cache-bytes ",
          options_.device_budget_bytes, ") has ", options_.device_budget_bytes - pinned_bytes_,
          " bytes not held by pinned adapters"));
    }
    id = next_id_++;
    Entry& entry = entries_[id];
    entry.path = path;
    entry.bytes = bytes;
    entry.last_used = ++lru_tick_;
    if (host != nullptr && device_used_ + bytes <= options_.device_budget_bytes) {
      entry.loading = true;  // reserve the room while the copy runs outside the lock
      device_used_ += bytes;
      to_device = true;
    } else {
      MoveLocked(entry, AdapterTier::kHost, host);
      MakeHostRoomLocked();
    }
    if (!to_device) {
      ++changes_;
      PublishLocked();
      return id;
    }
  }
  absl::StatusOr<std::shared_ptr<const deltas::DeltaSet>> device =
      Convert(host, options_.device, options_.dtype);
  absl::MutexLock lock(&mutex_);
  device_used_ -= bytes;
  if (Entry* entry = FindLocked(id)) {
    entry->loading = false;
    if (device.ok()) {
      MoveLocked(*entry, AdapterTier::kDevice, *device);
    } else {
      MoveLocked(*entry, AdapterTier::kHost, host);
      MakeHostRoomLocked();
    }
  }
  ++changes_;
  PublishLocked();
  return id;
}

absl::Status AdapterCache::Remove(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  return RemoveLocked(id);
}

absl::Status AdapterCache::RemoveWhenUnused(uint64_t id, absl::Time deadline) {
  absl::MutexLock lock(&mutex_);
  auto unused = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    const Entry* entry = FindLocked(id);
    return entry == nullptr || entry->users == 0;
  };
  if (deadline > clock_->Now()) clock_->AwaitWithDeadline(&mutex_, absl::Condition(&unused), deadline);
  return RemoveLocked(id);
}

absl::Status AdapterCache::RemoveLocked(uint64_t id) {
  Entry* entry = FindLocked(id);
  if (entry == nullptr) return NotInCache();
  if (entry->users > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the adapter is used by ", entry->users, " request(s)"));
  }
  MoveLocked(*entry, AdapterTier::kDisk, nullptr);  // releases its bytes
  if (entry->pinned) pinned_bytes_ -= entry->bytes;
  // A load in flight keeps its reservation until the loader sees the entry gone.
  entries_.erase(id);
  removed_.push_back(id);
  ++changes_;
  PublishLocked();
  return absl::OkStatus();
}

int64_t AdapterCache::MaxUnpinnedBytesLocked(uint64_t except) const {
  int64_t largest = 0;
  for (const auto& [id, entry] : entries_) {
    if (id != except && !entry.pinned) largest = std::max(largest, entry.bytes);
  }
  return largest;
}

absl::Status AdapterCache::Pin(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  Entry* found = FindLocked(id);
  if (found == nullptr) return NotInCache();
  Entry& entry = *found;
  entry.failed = false;  // pinning again retries a failed load
  ++changes_;
  if (entry.pinned) return absl::OkStatus();
  const int64_t room_needed = pinned_bytes_ + entry.bytes + MaxUnpinnedBytesLocked(id);
  if (room_needed > options_.device_budget_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "pinning it would hold ", pinned_bytes_ + entry.bytes,
        " bytes of the device adapter cache (--adapter-cache-bytes ", options_.device_budget_bytes,
        ") and leave too little room to load the largest unpinned adapter; unpin another first"));
  }
  entry.pinned = true;
  pinned_bytes_ += entry.bytes;
  ++changes_;
  return absl::OkStatus();
}

absl::Status AdapterCache::Unpin(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  Entry* entry = FindLocked(id);
  if (entry == nullptr) return NotInCache();
  if (!entry->pinned) return absl::OkStatus();
  entry->pinned = false;
  pinned_bytes_ -= entry->bytes;
  ++changes_;
  return absl::OkStatus();
}

absl::StatusOr<AdapterInfo> AdapterCache::Info(uint64_t id) const {
  absl::MutexLock lock(&mutex_);
  const Entry* entry = FindLocked(id);
  if (entry == nullptr) return NotInCache();
  return AdapterInfo{entry->tier, entry->bytes, entry->pinned, entry->loading, entry->users, entry->running};
}

AdapterResidency AdapterCache::Residency() const {
  absl::MutexLock lock(&mutex_);
  return ResidencyLocked();
}

AdapterResidency AdapterCache::ResidencyLocked() const {
  AdapterResidency residency;
  for (const auto& [id, entry] : entries_) {
    ++residency.count[static_cast<int>(entry.tier)];
    residency.bytes[static_cast<int>(entry.tier)] += entry.bytes;
  }
  return residency;
}

void AdapterCache::PublishLocked() {
  if (observer_ != nullptr) observer_->OnAdapterResidency(ResidencyLocked());
}

AdapterCache::Entry* AdapterCache::FindLocked(uint64_t id) {
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : &it->second;
}

const AdapterCache::Entry* AdapterCache::FindLocked(uint64_t id) const {
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : &it->second;
}

absl::Status AdapterCache::NotInCache() { return absl::NotFoundError("the adapter is not in the cache"); }

void AdapterCache::MoveLocked(Entry& entry, AdapterTier tier, std::shared_ptr<const deltas::DeltaSet> deltas) {
  if (entry.tier == AdapterTier::kDevice) device_used_ -= entry.bytes;
  if (entry.tier == AdapterTier::kHost) host_used_ -= entry.bytes;
  entry.device.reset();
  entry.host.reset();
  entry.tier = deltas == nullptr ? AdapterTier::kDisk : tier;
  if (entry.tier == AdapterTier::kDevice) {
    entry.device = std::move(deltas);
    device_used_ += entry.bytes;
  } else if (entry.tier == AdapterTier::kHost) {
    entry.host = std::move(deltas);
    host_used_ += entry.bytes;
  }
}

absl::Status AdapterCache::AddUser(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  Entry* entry = FindLocked(id);
  if (entry == nullptr) return absl::NotFoundError("the variant was deleted");
  ++entry->users;
  return absl::OkStatus();
}

void AdapterCache::ReleaseUser(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  Entry* entry = FindLocked(id);
  if (entry != nullptr && entry->users > 0) --entry->users;
}

std::shared_ptr<const deltas::DeltaSet> AdapterCache::AcquireResident(uint64_t id, uint64_t keep_room_for) {
  absl::MutexLock lock(&mutex_);
  Entry* entry = FindLocked(id);
  if (entry == nullptr || entry->tier != AdapterTier::kDevice) return nullptr;
  // An adapter already running or pinned is not evictable either way; an idle one may be the
  // room the older load needs.
  if (keep_room_for != 0 && keep_room_for != id && entry->running == 0 && !entry->pinned &&
      RoomForLocked(keep_room_for, /*without=*/0) && !RoomForLocked(keep_room_for, /*without=*/id)) {
    return nullptr;
  }
  ++entry->running;
  entry->last_used = ++lru_tick_;
  return entry->device;
}

bool AdapterCache::CanMakeRoomFor(uint64_t id) const {
  absl::MutexLock lock(&mutex_);
  return RoomForLocked(id, /*without=*/0);
}

bool AdapterCache::RoomForLocked(uint64_t id, uint64_t without) const {
  const Entry* wanted = FindLocked(id);
  // Loaded, reserved, or not loadable at all (its requests fail): it needs no room.
  if (wanted == nullptr || wanted->tier == AdapterTier::kDevice || wanted->loading || wanted->failed) return true;
  int64_t room = options_.device_budget_bytes - device_used_;
  for (const auto& [other_id, other] : entries_) {
    if (other_id == without || other.tier != AdapterTier::kDevice || other.pinned || other.running > 0) continue;
    room += other.bytes;
  }
  return room >= wanted->bytes;
}

void AdapterCache::ReleaseRunning(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  Entry* entry = FindLocked(id);
  if (entry == nullptr || entry->running == 0) return;
  entry->last_used = ++lru_tick_;
  if (--entry->running == 0) ++changes_;  // it may now be evicted for a waiting load
}

std::vector<uint64_t> AdapterCache::Want(std::vector<uint64_t> ids) {
  absl::MutexLock lock(&mutex_);
  std::vector<uint64_t> absent;
  for (uint64_t id : ids) {
    const Entry* entry = FindLocked(id);
    if (entry == nullptr || entry->tier != AdapterTier::kDevice) absent.push_back(id);
  }
  if (ids != wanted_) {
    // An adapter whose load failed is tried again once it is newly wanted (the requests that
    // wanted it before were failed with the reason).
    for (uint64_t id : ids) {
      if (std::find(wanted_.begin(), wanted_.end(), id) != wanted_.end()) continue;
      if (Entry* entry = FindLocked(id)) entry->failed = false;
    }
    wanted_ = std::move(ids);
    ++changes_;
  }
  return absent;
}

std::vector<std::pair<uint64_t, absl::Status>> AdapterCache::TakeLoadFailures() {
  absl::MutexLock lock(&mutex_);
  std::vector<std::pair<uint64_t, absl::Status>> failures;
  failures.swap(failures_);
  return failures;
}

std::vector<uint64_t> AdapterCache::TakeRemoved() {
  absl::MutexLock lock(&mutex_);
  std::vector<uint64_t> removed;
  removed.swap(removed_);
  return removed;
}

void AdapterCache::SetLoadListener(std::function<void()> listener) {
  absl::MutexLock lock(&mutex_);
  listener_ = std::move(listener);
}

bool AdapterCache::AwaitLoaderIdle(absl::Duration real_timeout) const {
  absl::MutexLock lock(&mutex_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return changes_seen_ == changes_ && !load_in_flight_;
  };
  return mutex_.AwaitWithTimeout(absl::Condition(&idle), real_timeout);
}

void AdapterCache::MakeHostRoomLocked() {
  while (host_used_ > options_.host_budget_bytes) {
    Entry* victim = nullptr;
    for (auto& [id, entry] : entries_) {
      if (entry.tier != AdapterTier::kHost || entry.path.empty() || entry.loading) continue;
      if (victim == nullptr || entry.last_used < victim->last_used) victim = &entry;
    }
    if (victim == nullptr) return;  // what is left cannot be re-read from disk
    MoveLocked(*victim, AdapterTier::kDisk, nullptr);
    if (observer_ != nullptr) observer_->OnAdapterEviction(AdapterTier::kHost);
  }
}

bool AdapterCache::MakeDeviceRoomLocked(uint64_t for_id, int64_t bytes) {
  if (device_used_ + bytes <= options_.device_budget_bytes) return true;
  // Urgency: position in wanted_ (pinned loads come before everything); not wanted = last.
  constexpr size_t kNotWanted = std::numeric_limits<size_t>::max();
  std::map<uint64_t, size_t> urgency;
  for (size_t i = 0; i < wanted_.size(); ++i) urgency.emplace(wanted_[i], i);
  auto urgency_of = [&](uint64_t id) {
    auto it = urgency.find(id);
    return it == urgency.end() ? kNotWanted : it->second;
  };
  const bool pinned_load = entries_.at(for_id).pinned;
  const size_t target = pinned_load ? 0 : urgency_of(for_id);
  std::vector<std::pair<uint64_t, Entry*>> candidates;
  for (auto& [id, entry] : entries_) {
    if (id == for_id || entry.tier != AdapterTier::kDevice || entry.pinned || entry.running > 0) continue;
    const size_t its_urgency = urgency_of(id);
    if (its_urgency != kNotWanted && (pinned_load ? false : its_urgency <= target)) continue;
    candidates.push_back({id, &entry});
  }
  // Not wanted first (least recently used first), then those wanted latest.
  std::sort(candidates.begin(), candidates.end(), [&](const auto& a, const auto& b) {
    const size_t ua = urgency_of(a.first), ub = urgency_of(b.first);
    if (ua != ub) return ua > ub;
    return a.second->last_used < b.second->last_used;
  });
  int64_t freed = 0;
  size_t victims = 0;
  while (device_used_ - freed + bytes > options_.device_budget_bytes) {
    if (victims == candidates.size()) return false;  // wait for running requests to let go
    freed += candidates[victims++].second->bytes;
  }
  for (size_t i = 0; i < victims; ++i) {
    Entry& entry = *candidates[i].second;
    MoveLocked(entry, AdapterTier::kHost, ToHost(entry.device));  // a failed copy: to disk
    if (observer_ != nullptr) observer_->OnAdapterEviction(AdapterTier::kDevice);
  }
  MakeHostRoomLocked();
  PublishLocked();
  return true;
}

uint64_t AdapterCache::NextLoadLocked() {
  std::vector<uint64_t> order;
  for (const auto& [id, entry] : entries_) {
    if (entry.pinned) order.push_back(id);
  }
  order.insert(order.end(), wanted_.begin(), wanted_.end());
  for (uint64_t id : order) {
    const Entry* entry = FindLocked(id);
    if (entry == nullptr || entry->tier == AdapterTier::kDevice || entry->loading || entry->failed) continue;
    // The most urgent load goes first; if it cannot make room yet, nothing behind it jumps it.
    return MakeDeviceRoomLocked(id, entry->bytes) ? id : 0;
  }
  return 0;
}

void AdapterCache::LoaderLoop() {
  absl::MutexLock lock(&mutex_);
  while (true) {
    auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return stopping_ || changes_ != changes_seen_;
    };
    mutex_.Await(absl::Condition(&has_work));
    if (stopping_) return;
    changes_seen_ = changes_;
    const uint64_t id = NextLoadLocked();
    if (id == 0) continue;
    load_in_flight_ = true;

    Entry& entry = entries_.at(id);
    entry.loading = true;
    device_used_ += entry.bytes;  // reserved while the load runs outside the lock
    const int64_t bytes = entry.bytes;
    const AdapterTier from = entry.tier;
    std::shared_ptr<const deltas::DeltaSet> host = entry.host;
    const std::string path = entry.path;
    mutex_.Unlock();

    const absl::Time started = clock_->Now();
    absl::StatusOr<std::shared_ptr<const deltas::DeltaSet>> device = [&]()
        -> absl::StatusOr<std::shared_ptr<const deltas::DeltaSet>> {
      if (host == nullptr) {
        absl::StatusOr<deltas::DeltaSet> read = options_.read(path);
        if (!read.ok()) return read.status();
        // Read straight into the serving layout when serving on the CPU: host and device tiers
        // then share the tensors.
        if (options_.device.is_cpu()) {
          RETURN_IF_ERROR(common::CatchTorchErrors("laying out adapter deltas", [&] { *read = deltas::ServingLayout(*read); }));
        }
        host = std::make_shared<const deltas::DeltaSet>(std::move(*read));
      }
      return Convert(host, options_.device, options_.dtype);
    }();
    const double seconds = absl::ToDoubleSeconds(clock_->Now() - started);

    mutex_.Lock();
    load_in_flight_ = false;
    device_used_ -= bytes;
    if (Entry* loaded = FindLocked(id)) {  // else removed meanwhile: drop what was loaded
      loaded->loading = false;
      if (device.ok()) {
        // An adapter added without its deltas (on disk, no bytes counted) learns its size now.
        if (loaded->tier == AdapterTier::kDisk) loaded->bytes = (*device)->Bytes();
        MoveLocked(*loaded, AdapterTier::kDevice, std::move(*device));
        loaded->last_used = ++lru_tick_;
        if (observer_ != nullptr) observer_->OnAdapterLoad(from, seconds);
      } else {
        loaded->failed = true;
        failures_.push_back({id, device.status()});
      }
    }
    ++changes_;
    PublishLocked();
    std::function<void()> listener = listener_;
    mutex_.Unlock();
    if (listener) listener();
    mutex_.Lock();
  }
}

}  // namespace deltaserve::engine
