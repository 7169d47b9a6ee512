// WaitUntil: the tests' one way to wait for a state that gives no event to wait on (another
// process's metrics or log, a worker thread's parking): it polls `condition` until it holds or
// `timeout` of real time passes, and returns whether it holds. Never a fixed sleep: a test
// asserts on the state it waited for, not on time having passed.
//   ASSERT_TRUE(WaitUntil([&] { return Sample(Scrape(), "deltaserve_requests_running") == 2; }));
#pragma once

#include <functional>

#include "absl/time/time.h"

namespace deltaserve::testing {

bool WaitUntil(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(30));

}  // namespace deltaserve::testing
