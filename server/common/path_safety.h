// ResolveUnderRoots turns a caller-supplied path into a real path that lies inside one of the
// allowed roots (e.g. --adapter-root), or explains why not. A path with a ".." component is
// refused outright; an absolute path must resolve (symlinks followed) inside a root; a relative
// path is tried against each root in order. Symlinks that lead out of the root are refused,
// as is anything that does not exist. Thread-safe (no shared state).
//   ASSIGN_OR_RETURN(std::string real, ResolveUnderRoots(request.path(), roots));
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace deltaserve::common {

absl::StatusOr<std::string> ResolveUnderRoots(const std::string& path,
                                              const std::vector<std::string>& roots);

}  // namespace deltaserve::common
