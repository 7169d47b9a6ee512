#include "server/common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace deltaserve::common {
namespace {

std::atomic<LogFormat> log_format{LogFormat::kText};

bool IsControl(unsigned char c) { return c < 0x20 || c == 0x7f; }

// Escaped: a control character as \n, \r, \t or \xNN.
std::string Escaped(unsigned char c) {
  switch (c) {
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    default: {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", c);
      return escaped;
    }
  }
}

}  // namespace

void SetLogFormat(LogFormat format) { log_format.store(format); }

std::string JsonQuoted(std::string_view text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
          out += escaped;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
  return out;
}

std::string FormatLogLine(LogFormat format, std::string_view time, std::string_view message, const LogFields& fields) {
  std::string line;
  if (format == LogFormat::kJson) {
    line = "{\"time\":" + JsonQuoted(time) + ",\"level\":\"info\",\"logger\":\"deltaserve\",\"message\":" +
           JsonQuoted(message);
    for (const auto& [key, value] : fields) line += "," + JsonQuoted(key) + ":" + JsonQuoted(value);
    line += "}";
    return line;
  }
  line = std::string(time) + " deltaserve: ";
  for (unsigned char c : message) {
    if (IsControl(c)) {
      line += Escaped(c);
    } else {
      line += static_cast<char>(c);
    }
  }
  for (const auto& [key, value] : fields) {
    bool plain = !value.empty();
    for (unsigned char c : value) plain &= c != ' ' && c != '=' && c != '"' && !IsControl(c);
    line += " " + key + "=" + (plain ? value : JsonQuoted(value));
  }
  return line;
}

void Log(std::string_view message, const LogFields& fields) {
  const std::string time = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::string line = FormatLogLine(log_format.load(), time, message, fields);
  line.push_back('\n');
  ssize_t written = ::write(STDERR_FILENO, line.data(), line.size());
  (void)written;
}

}  // namespace deltaserve::common
