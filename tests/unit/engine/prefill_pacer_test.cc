// PrefillPacer against a simulated device whose step time is a known function of the decode and
// prompt tokens (so the right budget is computed independently, by hand).
#include "server/engine/prefill_pacer.h"

#include <gtest/gtest.h>

namespace deltaserve::engine {
namespace {

// A device: a step costs `decode_ms` when it decodes, plus `prefill_ms_per_token` per prompt
// token (which may grow as a prompt's context grows).
struct SimulatedDevice {
  double decode_ms;
  double prefill_ms_per_token;
  absl::Duration Step(int64_t decodes, int64_t prompt_tokens) const {
    return absl::Milliseconds((decodes > 0 ? decode_ms : 0) + prefill_ms_per_token * static_cast<double>(prompt_tokens));
  }
};

PrefillPacerOptions Options(absl::Duration target) {
  PrefillPacerOptions options;
  options.target = target;
  options.min_tokens = 16;
  options.max_tokens = 2048;
  options.initial_tokens = 256;
  return options;
}

TEST(PrefillPacerTest, LearnsTheBudgetThatKeepsMixedStepsWithinTheTarget) {
  PrefillPacer pacer(Options(absl::Milliseconds(200)));
  EXPECT_EQ(pacer.Budget(), 256) << "before any measurement";
  const SimulatedDevice device{50, 2};
  for (int i = 0; i < 3; ++i) pacer.Observe(8, 0, device.Step(8, 0));
  for (int step = 0; step < 6; ++step) {
    const int64_t chunk = pacer.Budget();
    pacer.Observe(8, chunk, device.Step(8, chunk));
  }
  // Planned to 0.9 of the target: (180 - 50) / 2 = 65 tokens, so the steps stay within it.
  EXPECT_NEAR(pacer.Budget(), 65, 1);
  EXPECT_LE(device.Step(8, pacer.Budget()), absl::Milliseconds(200));
}

TEST(PrefillPacerTest, FollowsAPerTokenCostThatGrowsWithContext) {
  PrefillPacer pacer(Options(absl::Milliseconds(100)));
  SimulatedDevice device{20, 1};
  pacer.Observe(4, 0, device.Step(4, 0));
  absl::Duration worst_late;
  int64_t computed = 0;
  for (int step = 0; step < 60; ++step) {
    const int64_t chunk = pacer.Budget();
    device.prefill_ms_per_token = 1 + static_cast<double>(computed) / 1000;  // attention over a longer prefix
    const absl::Duration took = device.Step(4, chunk);
    if (step >= 5) worst_late = std::max(worst_late, took);
    pacer.Observe(4, chunk, took);
    computed += chunk;
  }
  // A step or two behind the cost's growth, but inside the headroom: within the target.
  EXPECT_LE(worst_late, absl::Milliseconds(100));
  EXPECT_GT(computed, 1500);
}

TEST(PrefillPacerTest, KeepsAFloorWhenDecodesAloneTakeTheTarget) {
  PrefillPacer pacer(Options(absl::Milliseconds(40)));
  const SimulatedDevice device{60, 1};
  pacer.Observe(64, 0, device.Step(64, 0));
  pacer.Observe(64, 100, device.Step(64, 100));
  EXPECT_EQ(pacer.Budget(), 16);
}

TEST(PrefillPacerTest, AFastDeviceGetsTheWholeBatchAndZeroTargetTurnsPacingOff) {
  PrefillPacer fast(Options(absl::Milliseconds(200)));
  const SimulatedDevice gpu{10, 0.01};
  fast.Observe(64, 0, gpu.Step(64, 0));
  fast.Observe(64, 256, gpu.Step(64, 256));
  EXPECT_EQ(fast.Budget(), 2048);
  PrefillPacer off(Options(absl::ZeroDuration()));
  EXPECT_EQ(off.Budget(), 2048);
  off.Observe(1, 2048, absl::Seconds(5));
  EXPECT_EQ(off.Budget(), 2048);
}

}  // namespace
}  // namespace deltaserve::engine
