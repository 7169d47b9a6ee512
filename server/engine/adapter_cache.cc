#include "server/engine/adapter_cache.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/common/torch_status.h"

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
    : options_(std::move(options)), observer_(observer) {
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

// Copies deltas to `device`/`dtype`; on the CPU in the same dtype the tensors are shared.
absl::StatusOr<std::shared_ptr<const deltas::DeltaSet>> Convert(
    std::shared_ptr<const deltas::DeltaSet> deltas, const at::Device& device, at::ScalarType dtype) {
  if (device.is_cpu()) return deltas;  // host deltas are on the CPU in the cache's dtype
  std::shared_ptr<const deltas::DeltaSet> converted;
  absl::Status status = common::CatchTorchErrors("copying adapter deltas", [&] {
    converted = std::make_shared<const deltas::DeltaSet>(deltas->To(device, dtype));
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
    entry.last_used = ++clock_;
    if (host != nullptr && device_used_ + bytes <= options_.device_budget_bytes) {
      entry.loading = true;  // reserve the room while the copy runs outside the lock
      device_used_ += bytes;
      to_device = true;
    } else if (host != nullptr) {
      entry.tier = AdapterTier::kHost;
      entry.host = host;
      host_used_ += bytes;
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
  auto it = entries_.find(id);
  if (it != entries_.end()) {
    Entry& entry = it->second;
    entry.loading = false;
    if (device.ok()) {
      entry.tier = AdapterTier::kDevice;
      entry.device = *device;
      device_used_ += bytes;
    } else {
      entry.tier = AdapterTier::kHost;
      entry.host = host;
      host_used_ += bytes;
      MakeHostRoomLocked();
    }
  }
  ++changes_;
  PublishLocked();
  return id;
}

absl::Status AdapterCache::Remove(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return absl::NotFoundError("the adapter is not in the cache");
  Entry& entry = it->second;
  if (entry.users > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the adapter is used by ", entry.users, " request(s)"));
  }
  if (entry.tier == AdapterTier::kDevice) device_used_ -= entry.bytes;
  if (entry.tier == AdapterTier::kHost) host_used_ -= entry.bytes;
  if (entry.pinned) pinned_bytes_ -= entry.bytes;
  // A load in flight keeps its reservation until the loader sees the entry gone.
  entries_.erase(it);
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
  auto it = entries_.find(id);
  if (it == entries_.end()) return absl::NotFoundError("the adapter is not in the cache");
  Entry& entry = it->second;
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
  auto it = entries_.find(id);
  if (it == entries_.end()) return absl::NotFoundError("the adapter is not in the cache");
  if (!it->second.pinned) return absl::OkStatus();
  it->second.pinned = false;
  pinned_bytes_ -= it->second.bytes;
  ++changes_;
  return absl::OkStatus();
}

absl::StatusOr<AdapterInfo> AdapterCache::Info(uint64_t id) const {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return absl::NotFoundError("the adapter is not in the cache");
  const Entry& entry = it->second;
  return AdapterInfo{entry.tier, entry.bytes, entry.pinned, entry.loading, entry.users, entry.running};
}

AdapterResidency AdapterCache::Residency() const {
  absl::MutexLock lock(&mutex_);
  AdapterResidency residency;
  for (const auto& [id, entry] : entries_) {
    ++residency.count[static_cast<int>(entry.tier)];
    residency.bytes[static_cast<int>(entry.tier)] += entry.bytes;
  }
  return residency;
}

void AdapterCache::PublishLocked() {
  if (observer_ == nullptr) return;
  AdapterResidency residency;
  for (const auto& [id, entry] : entries_) {
    ++residency.count[static_cast<int>(entry.tier)];
    residency.bytes[static_cast<int>(entry.tier)] += entry.bytes;
  }
  observer_->OnAdapterResidency(residency);
}

absl::Status AdapterCache::AddUser(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return absl::NotFoundError("the variant was deleted");
  ++it->second.users;
  return absl::OkStatus();
}

void AdapterCache::ReleaseUser(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(id);
  if (it != entries_.end() && it->second.users > 0) --it->second.users;
}

std::shared_ptr<const deltas::DeltaSet> AdapterCache::AcquireResident(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.tier != AdapterTier::kDevice) return nullptr;
  ++it->second.running;
  it->second.last_used = ++clock_;
  return it->second.device;
}

bool AdapterCache::BlockedForRoom() const {
  absl::MutexLock lock(&mutex_);
  return blocked_for_room_;
}

void AdapterCache::ReleaseRunning(uint64_t id) {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.running == 0) return;
  it->second.last_used = ++clock_;
  if (--it->second.running == 0) ++changes_;  // it may now be evicted for a waiting load
}

std::vector<uint64_t> AdapterCache::Want(std::vector<uint64_t> ids) {
  absl::MutexLock lock(&mutex_);
  std::vector<uint64_t> absent;
  for (uint64_t id : ids) {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.tier != AdapterTier::kDevice) absent.push_back(id);
  }
  if (ids != wanted_) {
    // An adapter whose load failed is tried again once it is newly wanted (the requests that
    // wanted it before were failed with the reason).
    for (uint64_t id : ids) {
      if (std::find(wanted_.begin(), wanted_.end(), id) != wanted_.end()) continue;
      auto it = entries_.find(id);
      if (it != entries_.end()) it->second.failed = false;
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

void AdapterCache::SetLoadListener(std::function<void()> listener) {
  absl::MutexLock lock(&mutex_);
  listener_ = std::move(listener);
}

void AdapterCache::MakeHostRoomLocked() {
  while (host_used_ > options_.host_budget_bytes) {
    Entry* victim = nullptr;
    for (auto& [id, entry] : entries_) {
      if (entry.tier != AdapterTier::kHost || entry.path.empty() || entry.loading) continue;
      if (victim == nullptr || entry.last_used < victim->last_used) victim = &entry;
    }
    if (victim == nullptr) return;  // what is left cannot be re-read from disk
    victim->host.reset();
    victim->tier = AdapterTier::kDisk;
    host_used_ -= victim->bytes;
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
    std::shared_ptr<const deltas::DeltaSet> host = ToHost(std::move(entry.device));
    entry.device.reset();
    device_used_ -= entry.bytes;
    if (host != nullptr) {
      entry.tier = AdapterTier::kHost;
      entry.host = std::move(host);
      host_used_ += entry.bytes;
    } else {
      entry.tier = AdapterTier::kDisk;
    }
    if (observer_ != nullptr) observer_->OnAdapterEviction(AdapterTier::kDevice);
  }
  MakeHostRoomLocked();
  return true;
}

uint64_t AdapterCache::NextLoadLocked() {
  std::vector<uint64_t> order;
  for (const auto& [id, entry] : entries_) {
    if (entry.pinned) order.push_back(id);
  }
  order.insert(order.end(), wanted_.begin(), wanted_.end());
  for (uint64_t id : order) {
    auto it = entries_.find(id);
    if (it == entries_.end()) continue;
    const Entry& entry = it->second;
    if (entry.tier == AdapterTier::kDevice || entry.loading || entry.failed) continue;
    // The most urgent load goes first; if it cannot make room yet, nothing behind it jumps it.
    blocked_for_room_ = !MakeDeviceRoomLocked(id, entry.bytes);
    return blocked_for_room_ ? 0 : id;
  }
  blocked_for_room_ = false;
  return 0;
}

void AdapterCache::LoaderLoop() {
  absl::MutexLock lock(&mutex_);
  uint64_t seen = changes_ - 1;
  while (true) {
    auto has_work = [this, &seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return stopping_ || changes_ != seen;
    };
    mutex_.Await(absl::Condition(&has_work));
    if (stopping_) return;
    seen = changes_;
    const uint64_t id = NextLoadLocked();
    PublishLocked();
    if (id == 0) continue;

    Entry& entry = entries_.at(id);
    entry.loading = true;
    device_used_ += entry.bytes;  // reserved while the load runs outside the lock
    const int64_t bytes = entry.bytes;
    const AdapterTier from = entry.tier;
    std::shared_ptr<const deltas::DeltaSet> host = entry.host;
    const std::string path = entry.path;
    mutex_.Unlock();

    const absl::Time started = absl::Now();
    absl::StatusOr<std::shared_ptr<const deltas::DeltaSet>> device = [&]()
        -> absl::StatusOr<std::shared_ptr<const deltas::DeltaSet>> {
      if (host == nullptr) {
        absl::StatusOr<deltas::DeltaSet> read = options_.read(path);
        if (!read.ok()) return read.status();
        host = std::make_shared<const deltas::DeltaSet>(std::move(*read));
      }
      return Convert(host, options_.device, options_.dtype);
    }();
    const double seconds = absl::ToDoubleSeconds(absl::Now() - started);

    mutex_.Lock();
    device_used_ -= bytes;
    auto it = entries_.find(id);
    if (it != entries_.end()) {  // else removed meanwhile: drop what was loaded
      Entry& loaded = it->second;
      loaded.loading = false;
      if (device.ok()) {
        if (loaded.tier == AdapterTier::kHost) host_used_ -= bytes;
        loaded.host.reset();
        loaded.device = std::move(*device);
        loaded.tier = AdapterTier::kDevice;
        loaded.last_used = ++clock_;
        // An adapter added without its deltas learns its size on its first load.
        loaded.bytes = loaded.device->Bytes();
        device_used_ += loaded.bytes;
        if (observer_ != nullptr) observer_->OnAdapterLoad(from, seconds);
      } else {
        loaded.failed = true;
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
