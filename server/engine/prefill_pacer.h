// PrefillPacer: how many prompt tokens a step that also decodes may take, so that a long prompt
// being prefilled does not stall the running streams beyond an inter-token latency target.
// It learns from each step's measured wall time, on whatever device and model:
//   - the cost of a step without prompt tokens (the decodes' own time), and
//   - the cost per prompt token (a step's time beyond the decodes' time, per prompt token);
// both as moving averages, so the estimate follows the per-token cost as a prompt's context
// grows. Budget() = (0.9 target - decode time) / per-token cost (a tenth of headroom for the
// estimate's lag and for noise), clamped to [min_tokens,
// max_tokens]: at least min_tokens so every prompt progresses even when the decodes alone take
// the whole target. Before a first measurement it is initial_tokens. A target of zero turns
// pacing off (Budget() = max_tokens). Engine-thread only.
#pragma once

#include <cstdint>

#include "absl/time/time.h"

namespace deltaserve::engine {

struct PrefillPacerOptions {
  absl::Duration target = absl::Milliseconds(200);
  int64_t min_tokens = 16;
  int64_t max_tokens = 2048;
  int64_t initial_tokens = 256;
};

class PrefillPacer {
 public:
  explicit PrefillPacer(PrefillPacerOptions options);

  int64_t Budget() const { return budget_; }
  // Observe: one step's decode and prompt token counts and its wall time.
  void Observe(int64_t decode_tokens, int64_t prefill_tokens, absl::Duration elapsed);

 private:
  PrefillPacerOptions options_;
  double decode_seconds_ = -1;            // per step without prompt tokens; < 0: not measured yet
  double prefill_seconds_per_token_ = -1;  // < 0: not measured yet
  int64_t budget_;
};

}  // namespace deltaserve::engine
