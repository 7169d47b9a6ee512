// NormalizeFlagNames lets binaries take --kebab-case flags (as documented) with Abseil flags,
// whose names use underscores: in every "--name[=value]" argument before a bare "--", dashes
// inside the name become underscores. Returns pointers into `storage`, which must outlive them.
// It also makes --help list the binary's own flags (Abseil's --helpfull adds Abseil's).
//   std::vector<std::string> storage;
//   std::vector<char*> args = NormalizeFlagNames(argc, argv, storage);
//   absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
#pragma once

#include <string>
#include <vector>

namespace deltaserve::common {

std::vector<char*> NormalizeFlagNames(int argc, char** argv, std::vector<std::string>& storage);

}  // namespace deltaserve::common
