#include "tests/support/wait_until.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace deltaserve::testing {

bool WaitUntil(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  // Short first looks for states that are nearly there, then gentler ones for slow ones.
  absl::Duration pause = absl::Milliseconds(1);
  while (!condition()) {
    if (absl::Now() >= give_up) return false;
    absl::SleepFor(pause);
    pause = std::min(pause * 2, absl::Milliseconds(50));
  }
  return true;
}

}  // namespace deltaserve::testing
