// Progress: how the long-running ops functions (fine-tuning, unlearning, editing) report what
// they do and learn that they should stop. Called with the fraction done (0..1, never falling)
// and a short message; a non-OK status (e.g. CANCELLED) makes the function stop and return it.
// A null Progress reports nowhere and never stops.
//   ops::Progress progress = [&](double done, const std::string& message) { return context.Step(done, message); };
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"

namespace deltaserve::ops {

using Progress = std::function<absl::Status(double fraction, const std::string& message)>;

// Report calls `progress` when it is set.
inline absl::Status Report(const Progress& progress, double fraction, const std::string& message) {
  return progress ? progress(fraction, message) : absl::OkStatus();
}

// Within maps a sub-task's progress onto [from, to] of its caller's.
inline Progress Within(const Progress& progress, double from, double to) {
  if (!progress) return nullptr;
  return [progress, from, to](double fraction, const std::string& message) {
    return progress(from + (to - from) * fraction, message);
  };
}

}  // namespace deltaserve::ops
