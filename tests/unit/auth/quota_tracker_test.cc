// Quotas on a manual clock: the token bucket empties by what requests generate, refills at the
// per-minute rate, and says how long to wait; concurrency slots come back with their leases.
#include "server/auth/quota_tracker.h"

#include <gtest/gtest.h>

#include "server/common/clock.h"
#include "server/common/retry_after.h"

namespace deltaserve::auth {
namespace {

Principal Tenant(const std::string& name, int64_t tokens_per_minute, int64_t concurrent = 0) {
  Principal principal;
  principal.tenant = name;
  principal.quotas.set_generated_tokens_per_minute(tokens_per_minute);
  principal.quotas.set_max_concurrent_requests(concurrent);
  return principal;
}

TEST(QuotaTrackerTest, TheTokenBucketRefillsAtItsRateAndNamesTheWait) {
  common::ManualClock clock;
  QuotaTracker quotas(&clock);
  const Principal beta = Tenant("beta", 300);  // 5 tokens a second
  {
    auto lease = quotas.Admit(beta);
    ASSERT_TRUE(lease.ok()) << lease.status();
    (*lease)->Charge(310);  // 10 owed
  }
  auto refused = quotas.Admit(beta);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("generated_tokens_per_minute quota of 300; retry in"), std::string::npos)
      << refused.status();
  // 11 tokens at 5 a second: 2.2 s until the bucket holds a whole token again.
  const std::optional<absl::Duration> wait = common::RetryAfter(refused.status());
  ASSERT_TRUE(wait.has_value());
  EXPECT_NEAR(absl::ToDoubleSeconds(*wait), 2.2, 1e-6);
  // It admits again once the debt is paid (2 s), not before.
  clock.Advance(absl::Milliseconds(1900));
  EXPECT_EQ(quotas.Admit(beta).status().code(), absl::StatusCode::kResourceExhausted);
  clock.Advance(absl::Milliseconds(300));
  EXPECT_TRUE(quotas.Admit(beta).ok()) << "the bucket refilled";
  // It never holds more than one minute's worth.
  clock.Advance(absl::Hours(1));
  {
    auto lease = quotas.Admit(beta);
    ASSERT_TRUE(lease.ok());
    (*lease)->Charge(300);
  }
  EXPECT_EQ(quotas.Admit(beta).status().code(), absl::StatusCode::kResourceExhausted);
  // Another tenant's bucket is its own.
  EXPECT_TRUE(quotas.Admit(Tenant("gamma", 300)).ok());
}

TEST(QuotaTrackerTest, ConcurrencySlotsReturnWithTheirLeases) {
  common::ManualClock clock;
  QuotaTracker quotas(&clock);
  const Principal acme = Tenant("acme", 0, 2);
  auto first = quotas.Admit(acme);
  auto second = quotas.Admit(acme);
  ASSERT_TRUE(first.ok() && second.ok());
  auto third = quotas.Admit(acme);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(third.status().message().find("max_concurrent_requests"), std::string::npos) << third.status();
  first->reset();
  EXPECT_TRUE(quotas.Admit(acme).ok()) << "a finished request's slot is free again";
}

}  // namespace
}  // namespace deltaserve::auth
