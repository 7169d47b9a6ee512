// QuotaTracker: the serving quotas of tenants (TenantQuotas in config.proto), in memory:
// concurrent Generate/Score calls and a generated-tokens-per-minute token bucket per tenant.
// Admit hands out a RequestLease, which holds one concurrency slot until it is destroyed;
// Charge takes the tokens its request generated from the bucket. The bucket starts full,
// refills continuously at the per-minute rate up to one minute's worth, and admits while it is
// not empty (a request's tokens are unknown in advance, so it may go below zero; the tenant
// then waits until it refills). Over a quota Admit returns RESOURCE_EXHAUSTED with the time to
// wait (common/retry_after.h).
// Thread-safe; leases may outlive nothing but the tracker.
//   ASSIGN_OR_RETURN(std::shared_ptr<RequestLease> lease, quotas.Admit(principal));
//   lease->Charge(generated_tokens);   // when the request ends
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/auth/authenticator.h"
#include "server/common/clock.h"

namespace deltaserve::auth {

class QuotaTracker;

class RequestLease {
 public:
  ~RequestLease();
  RequestLease(const RequestLease&) = delete;
  RequestLease& operator=(const RequestLease&) = delete;
  // Charge takes tokens the lease's request generated from the tenant's bucket.
  void Charge(int64_t tokens);

 private:
  friend class QuotaTracker;
  RequestLease(QuotaTracker* tracker, std::string tenant) : tracker_(tracker), tenant_(std::move(tenant)) {}
  QuotaTracker* tracker_;
  std::string tenant_;
};

class QuotaTracker {
 public:
  // Buckets refill by `clock` (null = common::RealClock()), which must outlive the tracker.
  explicit QuotaTracker(common::Clock* clock = nullptr) : clock_(clock != nullptr ? clock : common::RealClock()) {}

  // Admit: a lease for one request of `principal`, or RESOURCE_EXHAUSTED naming the quota.
  absl::StatusOr<std::shared_ptr<RequestLease>> Admit(const Principal& principal);

 private:
  friend class RequestLease;
  struct TenantState {
    int64_t running = 0;
    double bucket = 0;
    int64_t capacity = 0;  // the bucket's size when last admitted (quotas may be reloaded)
    absl::Time refilled;
  };
  void Release(const std::string& tenant);
  void Consume(const std::string& tenant, int64_t tokens);
  static void RefillLocked(TenantState& state, absl::Time now);

  common::Clock* const clock_;
  absl::Mutex mutex_;
  std::map<std::string, TenantState> tenants_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace deltaserve::auth
