#include "server/engine/text_output.h"

#include <algorithm>

namespace deltaserve::engine {

std::string TextOutput::Append(std::string_view token_bytes) {
  if (stopped_) return "";
  pending_ += decoder_.Append(token_bytes);
  // A stop string can only lie wholly inside pending_: anything released earlier was checked
  // not to be the start of one.
  size_t earliest = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    size_t found = pending_.find(stop);
    if (found != std::string::npos) earliest = std::min(earliest, found);
  }
  if (earliest != std::string::npos) {
    stopped_ = true;
    std::string released = pending_.substr(0, earliest);
    pending_.clear();
    return released;
  }
  size_t hold = 0;
  for (const std::string& stop : stop_strings_) {
    for (size_t length = std::min(stop.size() - 1, pending_.size()); length > hold; --length) {
      if (pending_.compare(pending_.size() - length, length, stop, 0, length) == 0) {
        hold = length;
        break;
      }
    }
  }
  std::string released = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return released;
}

std::string TextOutput::Flush() {
  if (stopped_) return "";
  std::string released = pending_ + decoder_.Flush();
  pending_.clear();
  return released;
}

}  // namespace deltaserve::engine
