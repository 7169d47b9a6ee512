// JsonNestingWithin: whether JSON text nests objects and arrays at most max_depth deep (strings
// and their escapes skipped). Checked before parsing untrusted JSON: nlohmann's dump() and
// value copies recurse per level, so a hostile document of a million '[' would overflow the
// stack. Pure function.
//   if (!JsonNestingWithin(text, 32)) return absl::InvalidArgumentError("nested too deeply");
#pragma once

#include <string_view>

namespace deltaserve::common {

inline bool JsonNestingWithin(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

}  // namespace deltaserve::common
