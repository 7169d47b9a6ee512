// Log writes one timestamped line to stderr. Thread-safe (one write call per line).
//   Log(absl::StrCat("loaded ", path));
#pragma once

#include <string_view>

namespace deltaserve::common {

void Log(std::string_view message);

}  // namespace deltaserve::common
