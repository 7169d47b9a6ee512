// Log writes one line to stderr: "TIME deltaserve: message key=value ..." (text, the default) or
// one JSON object per line, {"time", "level", "message", and each field} (SetLogFormat(kJson),
// for log collectors). Fields carry what a line is about: request_id, tenant, variant, ...
// Clients choose some of what is logged (request ids, variant names, paths, user agents), so no
// text can forge a line or a field: in the text format, control characters in the message are
// escaped (\n, \xNN), and a field value with a space, '=', '"', a control character, or none at
// all is written as a JSON string literal ("a b", "x\ny"), as logfmt does.
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

// FormatLogLine: the line Log writes (without its newline) at `time`.
std::string FormatLogLine(LogFormat format, std::string_view time, std::string_view message, const LogFields& fields);

// JsonQuoted: `text` as a JSON string literal (quotes included; control characters escaped,
// other bytes as they are: callers log UTF-8).
std::string JsonQuoted(std::string_view text);

}  // namespace deltaserve::common
