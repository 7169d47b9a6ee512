#include "server/common/flag_names.h"

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace deltaserve::common {

std::vector<char*> NormalizeFlagNames(int argc, char** argv, std::vector<std::string>& storage) {
  // --help lists the binary's own flags: Abseil's default shows only those of a file named
  // after the binary, which none of ours is.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return !absl::StrContains(file, "absl/"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  storage.assign(argv, argv + argc);
  bool flags_ended = false;
  for (size_t i = 1; i < storage.size(); ++i) {
    std::string& arg = storage[i];
    if (flags_ended || arg.size() < 3 || arg[0] != '-') continue;
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    size_t start = arg[1] == '-' ? 2 : 1;
    size_t end = arg.find('=');
    if (end == std::string::npos) end = arg.size();
    for (size_t j = start; j < end; ++j) {
      if (arg[j] == '-') arg[j] = '_';
    }
  }
  std::vector<char*> pointers;
  for (std::string& arg : storage) pointers.push_back(arg.data());
  pointers.push_back(nullptr);
  pointers.pop_back();
  return pointers;
}

}  // namespace deltaserve::common
