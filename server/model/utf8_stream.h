// UTF-8 helpers for streaming decoded text.
// Utf8StreamDecoder takes raw bytes piece by piece and returns only complete, valid UTF-8:
// an incomplete character at the end is held back until its remaining bytes arrive, and
// invalid bytes become U+FFFD. Flush() releases what is held (as U+FFFD). Not thread-safe.
//   Utf8StreamDecoder decoder;
//   decoder.Append("\xE4\xBD");  // == ""
//   decoder.Append("\xA0");      // == "你"
#pragma once

#include <string>
#include <string_view>

namespace deltaserve::model {

class Utf8StreamDecoder {
 public:
  std::string Append(std::string_view bytes);
  std::string Flush();

 private:
  std::string pending_;
};

// SanitizeUtf8 replaces every invalid sequence in `bytes` with U+FFFD.
std::string SanitizeUtf8(std::string_view bytes);
bool IsValidUtf8(std::string_view bytes);

}  // namespace deltaserve::model
