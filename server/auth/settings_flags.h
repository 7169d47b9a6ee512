// Settings from the configuration file's `server { }` block applied to the command-line flags of
// the same names (--max-queued-requests is the field max_queued_requests). A flag given on the
// command line wins; a field is applied through the flag's own parser, so the file is checked
// as the command line would be. Call after absl::ParseCommandLine and before reading flags.
//   RETURN_IF_ERROR(ApplySettingsToFlags(config.server(), path, normalized_arguments));
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "deltaserve/v1/config.pb.h"

namespace deltaserve::auth {

// ApplySettingsToFlags: `arguments` are the command line with underscores in flag names
// (common/flag_names.h); a flag among them ("--name", "--name=value", "--noname", one dash or
// two, before a bare "--") is left alone. INVALID_ARGUMENT "SOURCE: server.FIELD: ..." for a
// value the flag refuses; INTERNAL for a field with no flag of its name (the schema and the
// binary disagree).
absl::Status ApplySettingsToFlags(const deltaserve::v1::ServerSettings& settings, const std::string& source,
                                  const std::vector<std::string>& arguments);

// FlagsWithoutSettings: the flags defined in files whose path ends with `file_suffix` that have
// no ServerSettings field, apart from `except` (start-up checks that the schema covers them).
std::vector<std::string> FlagsWithoutSettings(const std::string& file_suffix, const std::vector<std::string>& except);

}  // namespace deltaserve::auth
