// Log writes one line to stderr: "TIME deltaserve: message key=value ..." (text, the default) or
// one JSON object per line, {"time", "level", "message", and each field} (SetLogFormat(kJson),
// for log collectors). Fields carry what a line is about: request_id, tenant, variant, ...
// Thread-safe (one write call per line).
//   Log(absl::StrCat("loaded ", path));
//   Log("request finished", {{"request_id", id}, {"status", "OK"}});
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace deltaserve::common {

enum class LogFormat { kText, kJson };
void SetLogFormat(LogFormat format);

using LogFields = std::vector<std::pair<std::string, std::string>>;
void Log(std::string_view message, const LogFields& fields = {});

// JsonQuoted: `text` as a JSON string literal (quotes included; control characters escaped,
// other bytes as they are: callers log UTF-8).
std::string JsonQuoted(std::string_view text);

}  // namespace deltaserve::common
