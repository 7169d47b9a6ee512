// RESOURCE_EXHAUSTED errors that say when to retry: the duration travels in the status as a
// payload, and the API layer turns it into gRPC retry-pushback metadata (grpc-retry-pushback-ms)
// beside a message that names the limit and the wait.
//   return ResourceExhaustedWithRetry("the request queue is full; retry later", absl::Seconds(1));
//   if (auto wait = RetryAfter(status)) context.AddTrailingMetadata(...);
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace deltaserve::common {

// ResourceExhaustedWithRetry: RESOURCE_EXHAUSTED with `message`, carrying `retry_after` when
// there is a time that helps.
absl::Status ResourceExhaustedWithRetry(const std::string& message, std::optional<absl::Duration> retry_after);
// RetryAfter: the time a status carries, if any.
std::optional<absl::Duration> RetryAfter(const absl::Status& status);

}  // namespace deltaserve::common
