// ServerConfig files (--config): parsing protobuf text format with errors that give the line and
// column, and the checks the schema cannot express (tenant names, digests, namespaces).
//   ASSIGN_OR_RETURN(v1::ServerConfig config, LoadServerConfig("/etc/deltaserve/config.textproto"));
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "deltaserve/v1/config.pb.h"

namespace deltaserve::auth {

// ParseServerConfig: INVALID_ARGUMENT "SOURCE:LINE:COLUMN: ..." for a syntax or schema error,
// "SOURCE: tenants[i] ..." for an invalid value.
absl::StatusOr<deltaserve::v1::ServerConfig> ParseServerConfig(const std::string& text, const std::string& source);
// LoadServerConfig reads and parses a file (NOT_FOUND when it cannot be read).
absl::StatusOr<deltaserve::v1::ServerConfig> LoadServerConfig(const std::string& path);

}  // namespace deltaserve::auth
