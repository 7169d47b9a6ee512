// AuditLog: an append-only record of every mutating RPC (DATA_DIR/audit.log): one JSON line per
// call with the time, the tenant ("-" on an open server, "?" when unauthenticated), the RPC, its
// target and the outcome (the gRPC code name and, on failure, the message). Lines are appended
// with O_APPEND and synced before the call answers. Thread-safe.
//   ASSIGN_OR_RETURN(auto audit, AuditLog::Open(JoinPath(data_dir, "audit.log")));
//   audit->Record("acme", "DeleteVariant", "acme/bot", status);
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace deltaserve::auth {

class AuditLog {
 public:
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path);
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  void Record(const std::string& tenant, const std::string& rpc, const std::string& target,
              const absl::Status& outcome);

 private:
  explicit AuditLog(int fd) : fd_(fd) {}
  absl::Mutex mutex_;
  int fd_;
};

}  // namespace deltaserve::auth
