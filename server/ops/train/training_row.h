// TrainingRow: one row of training data as uploaded: a plain text (prompt empty: every token is
// a target), or a prompt and its completion (only the completion's tokens are targets).
// Plain data, no libtorch (dataset parsing uses it without the trainer).
#pragma once

#include <string>

namespace deltaserve::ops::train {

struct TrainingRow {
  std::string prompt;
  std::string completion;  // the whole text of a plain row
  bool is_prompt_completion() const { return !prompt.empty(); }
};

}  // namespace deltaserve::ops::train
