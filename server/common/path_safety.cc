#include "server/common/path_safety.h"

#include <limits.h>
#include <stdlib.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace deltaserve::common {
namespace {

// RealPath resolves symlinks, "." and duplicate slashes; empty when the path does not exist.
std::string RealPath(const std::string& path) {
  char buffer[PATH_MAX];
  return ::realpath(path.c_str(), buffer) == nullptr ? std::string() : std::string(buffer);
}

bool Inside(const std::string& real, const std::string& root) {
  return real == root || (real.size() > root.size() && real.compare(0, root.size(), root) == 0 &&
                          (root == "/" || real[root.size()] == '/'));
}

}  // namespace

absl::StatusOr<std::string> ResolveUnderRoots(const std::string& path,
                                              const std::vector<std::string>& roots) {
  if (path.empty()) return absl::InvalidArgumentError("the path is empty");
  if (path.find('\0') != std::string::npos) return absl::InvalidArgumentError("the path contains a NUL byte");
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") {
      return absl::InvalidArgumentError(absl::StrCat("path \"", path, "\" contains \"..\"; give a path inside an allowed root"));
    }
  }
  if (roots.empty()) {
    return absl::FailedPreconditionError("no roots are allowed on this server (start it with --adapter-root DIR)");
  }
  std::vector<std::string> candidates;
  if (path[0] == '/') {
    candidates.push_back(path);
  } else {
    for (const std::string& root : roots) candidates.push_back(root + "/" + path);
  }
  bool exists = false;
  for (const std::string& candidate : candidates) {
    const std::string real = RealPath(candidate);
    if (real.empty()) continue;
    exists = true;
    for (const std::string& root : roots) {
      const std::string real_root = RealPath(root);
      if (!real_root.empty() && Inside(real, real_root)) return real;
    }
  }
  if (!exists) return absl::NotFoundError(absl::StrCat("path \"", path, "\" does not exist under an allowed root"));
  return absl::PermissionDeniedError(absl::StrCat(
      "path \"", path, "\" resolves outside the allowed roots (symlinks are followed)"));
}

}  // namespace deltaserve::common
