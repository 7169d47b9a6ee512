#include "server/auth/quota_tracker.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/common/retry_after.h"

namespace deltaserve::auth {

RequestLease::~RequestLease() { tracker_->Release(tenant_); }

void RequestLease::Charge(int64_t tokens) { tracker_->Consume(tenant_, tokens); }

void QuotaTracker::RefillLocked(TenantState& state, absl::Time now) {
  if (state.capacity <= 0) return;
  const double rate = state.capacity / 60.0;  // tokens per second
  state.bucket = std::min<double>(state.capacity, state.bucket + rate * absl::ToDoubleSeconds(now - state.refilled));
  state.refilled = now;
}

absl::StatusOr<std::shared_ptr<RequestLease>> QuotaTracker::Admit(const Principal& principal) {
  const deltaserve::v1::TenantQuotas& quotas = principal.quotas;
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mutex_);
  auto [it, fresh] = tenants_.try_emplace(principal.tenant);
  TenantState& state = it->second;
  if (state.capacity != quotas.generated_tokens_per_minute()) {  // first use, or a reloaded quota
    state.bucket = fresh ? quotas.generated_tokens_per_minute() : std::min<double>(state.bucket, quotas.generated_tokens_per_minute());
    state.capacity = quotas.generated_tokens_per_minute();
    state.refilled = now;
  }
  RefillLocked(state, now);
  if (quotas.max_concurrent_requests() > 0 && state.running >= quotas.max_concurrent_requests()) {
    return common::ResourceExhaustedWithRetry(absl::StrCat("tenant \"", principal.tenant, "\" has ", state.running,
                                      " requests in flight, its max_concurrent_requests quota; retry when one finishes"),
                         absl::Seconds(1));
  }
  if (state.capacity > 0 && state.bucket <= 0) {
    const absl::Duration wait = absl::Seconds((1.0 - state.bucket) / (state.capacity / 60.0));
    return common::ResourceExhaustedWithRetry(absl::StrCat("tenant \"", principal.tenant, "\" used its generated_tokens_per_minute quota of ",
                                      state.capacity, "; retry in ", absl::FormatDuration(absl::Ceil(wait, absl::Milliseconds(100)))),
                         wait);
  }
  ++state.running;
  return std::shared_ptr<RequestLease>(new RequestLease(this, principal.tenant));
}

void QuotaTracker::Release(const std::string& tenant) {
  absl::MutexLock lock(&mutex_);
  --tenants_[tenant].running;
}

void QuotaTracker::Consume(const std::string& tenant, int64_t tokens) {
  absl::MutexLock lock(&mutex_);
  TenantState& state = tenants_[tenant];
  RefillLocked(state, clock_->Now());
  if (state.capacity > 0) state.bucket -= static_cast<double>(tokens);
}

}  // namespace deltaserve::auth
