#include "server/common/retry_after.h"

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"

namespace deltaserve::common {
namespace {

constexpr const char* kRetryAfterPayload = "type.deltaserve/retry-after-ms";

}  // namespace

absl::Status ResourceExhaustedWithRetry(const std::string& message, std::optional<absl::Duration> retry_after) {
  absl::Status status = absl::ResourceExhaustedError(message);
  if (retry_after.has_value()) {
    status.SetPayload(kRetryAfterPayload, absl::Cord(std::to_string(absl::ToInt64Milliseconds(*retry_after))));
  }
  return status;
}

std::optional<absl::Duration> RetryAfter(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryAfterPayload);
  int64_t milliseconds = 0;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &milliseconds)) return std::nullopt;
  return absl::Milliseconds(milliseconds);
}

}  // namespace deltaserve::common
