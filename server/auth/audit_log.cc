#include "server/auth/audit_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/common/log.h"

namespace deltaserve::auth {

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open the audit log ", path, ": ", std::strerror(errno)));
  return std::unique_ptr<AuditLog>(new AuditLog(fd));
}

AuditLog::~AuditLog() { ::close(fd_); }

void AuditLog::Record(const std::string& tenant, const std::string& rpc, const std::string& target,
                      const absl::Status& outcome) {
  nlohmann::json line = {{"time", absl::FormatTime(absl::RFC3339_full, absl::Now(), absl::UTCTimeZone())},
                         {"tenant", tenant},
                         {"rpc", rpc},
                         {"target", target},
                         {"outcome", absl::StatusCodeToString(outcome.code())}};
  if (!outcome.ok()) line["message"] = std::string(outcome.message());
  // Invalid UTF-8 in a target (a refused name) is replaced, not thrown on.
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  absl::MutexLock lock(&mutex_);
  if (::write(fd_, text.data(), text.size()) != static_cast<ssize_t>(text.size()) || ::fdatasync(fd_) != 0) {
    common::Log(absl::StrCat("audit log: cannot append: ", std::strerror(errno)));
  }
}

}  // namespace deltaserve::auth
