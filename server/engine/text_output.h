// TextOutput turns a request's generated token bytes into streamable text: complete UTF-8 only
// (incomplete characters are held back), and text that might be the start of a stop string is
// held back until it is known not to be one. When a stop string appears, the text before it is
// released and Stopped() becomes true; the stop string itself is never released.
// Not thread-safe (one per request, engine thread).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "server/model/utf8_stream.h"

namespace deltaserve::engine {

class TextOutput {
 public:
  explicit TextOutput(std::vector<std::string> stop_strings = {})
      : stop_strings_(std::move(stop_strings)) {}

  // Append adds one token's bytes and returns the text that may be released now.
  std::string Append(std::string_view token_bytes);
  // Flush returns everything still held (the request is finishing without a stop string).
  std::string Flush();
  bool Stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_strings_;
  model::Utf8StreamDecoder decoder_;
  std::string pending_;  // valid UTF-8 not yet released
  bool stopped_ = false;
};

}  // namespace deltaserve::engine
