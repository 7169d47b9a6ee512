// Progress display for deltactl's long operations (jobs it follows, uploads it streams), on
// stderr. --progress=auto (the default) draws one bar redrawn in place when stderr is a
// terminal and nothing otherwise; always draws even when it is not (one line per 10%, for logs);
// never turns it off.
//   ProgressDisplay progress("upload acme/bot");
//   progress.Update(sent_bytes, total_bytes);  ...  progress.Finish();
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

ABSL_DECLARE_FLAG(std::string, progress);

namespace deltaserve::client {

// ProgressBar: "[##########..............]" for a fraction from 0 to 1.
inline std::string ProgressBar(double fraction, int width = 24) {
  const int filled = std::clamp(static_cast<int>(std::floor(fraction * width)), 0, width);
  return "[" + std::string(filled, '#') + std::string(width - filled, '.') + "]";
}

class ProgressDisplay {
 public:
  explicit ProgressDisplay(std::string label) : label_(std::move(label)) {
    const std::string mode = absl::GetFlag(FLAGS_progress);
    terminal_ = ::isatty(STDERR_FILENO) == 1;
    enabled_ = mode == "always" || (mode == "auto" && terminal_);
  }

  // Update shows `done` of `total` bytes (total 0: nothing to show yet).
  void Update(int64_t done, int64_t total) {
    if (!enabled_ || total <= 0) return;
    const double fraction = std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
    const int step = static_cast<int>(fraction * 10);
    if (!terminal_ && step == last_step_) return;  // logs: one line per 10%
    last_step_ = step;
    const std::string line = absl::StrFormat("%s %s %3d%% %.1f/%.1f MiB", label_, ProgressBar(fraction),
                                             static_cast<int>(fraction * 100), done / 1048576.0, total / 1048576.0);
    std::fprintf(stderr, terminal_ ? "\r\033[K%s" : "%s\n", line.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }

  // Finish ends the bar's line on a terminal.
  void Finish() {
    if (enabled_ && terminal_ && drawn_) std::fprintf(stderr, "\n");
    drawn_ = false;
  }

 private:
  std::string label_;
  bool terminal_ = false;
  bool enabled_ = false;
  bool drawn_ = false;
  int last_step_ = -1;
};

}  // namespace deltaserve::client
