#include "server/engine/prefill_pacer.h"

#include <algorithm>
#include <cmath>

namespace deltaserve::engine {
namespace {

// Moving averages: decode time changes slowly; the per-token prompt cost grows with context, so
// it follows the last steps closely.
constexpr double kDecodeWeight = 0.3;
constexpr double kPrefillWeight = 0.5;
// Steps are planned to a tenth under the target: room for the estimate lagging a cost that grows,
// and for noise.
constexpr double kPlannedShare = 0.9;

double Blend(double average, double sample, double weight) {
  return average < 0 ? sample : average + weight * (sample - average);
}

}  // namespace

PrefillPacer::PrefillPacer(PrefillPacerOptions options) : options_(options) {
  options_.min_tokens = std::max<int64_t>(1, options_.min_tokens);
  options_.max_tokens = std::max(options_.min_tokens, options_.max_tokens);
  budget_ = options_.target <= absl::ZeroDuration()
                ? options_.max_tokens
                : std::clamp(options_.initial_tokens, options_.min_tokens, options_.max_tokens);
}

void PrefillPacer::Observe(int64_t decode_tokens, int64_t prefill_tokens, absl::Duration elapsed) {
  const double seconds = absl::ToDoubleSeconds(elapsed);
  if (options_.target <= absl::ZeroDuration() || !(seconds > 0) || decode_tokens + prefill_tokens <= 0) return;
  if (prefill_tokens == 0) {
    decode_seconds_ = Blend(decode_seconds_, seconds, kDecodeWeight);
  } else {
    // The decodes' share of a mixed step is what a step of decodes alone took (none when the
    // step had no decodes); at least a tenth of the step is put down to the prompt tokens.
    const double decodes = decode_tokens > 0 ? std::max(decode_seconds_, 0.0) : 0.0;
    const double per_token = std::max(seconds - decodes, 0.1 * seconds) / static_cast<double>(prefill_tokens);
    prefill_seconds_per_token_ = Blend(prefill_seconds_per_token_, per_token, kPrefillWeight);
  }
  if (prefill_seconds_per_token_ <= 0) return;
  const double room = kPlannedShare * absl::ToDoubleSeconds(options_.target) - std::max(decode_seconds_, 0.0);
  const double tokens = std::floor(room / prefill_seconds_per_token_);
  budget_ = tokens >= static_cast<double>(options_.max_tokens)
                ? options_.max_tokens
                : std::max(options_.min_tokens, static_cast<int64_t>(std::max(tokens, 0.0)));
}

}  // namespace deltaserve::engine
