// Authenticator: who is calling. It holds the tenants of the server configuration and maps an
// "authorization" metadata value ("Bearer <key>") to a Principal: the key is hashed with SHA-256
// and compared, in constant time and without stopping at the first match, with every tenant's
// digests, so the time taken says nothing about which digest (or how much of one) matched.
// Without tenants the server is open and every caller is an anonymous admin.
// Reload swaps in a new configuration at once for every later call (an invalid file is refused
// and the old one stays). Thread-safe.
//   ASSIGN_OR_RETURN(auto authenticator, Authenticator::Create(config_path));
//   ASSIGN_OR_RETURN(Principal caller, authenticator->Authenticate(header_value));
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "deltaserve/v1/config.pb.h"

namespace deltaserve::auth {

struct Principal {
  std::string tenant;  // "" when the server is open
  bool admin = false;
  std::vector<std::string> namespaces;
  deltaserve::v1::TenantQuotas quotas;  // as configured; 0 = unlimited
  double weight = 1.0;  // share in fair scheduling
};

class Authenticator {
 public:
  // Create loads `config_path` ("" = no file: open).
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const std::string& config_path);
  // `config` as loaded from `config_path` (which Reload reads again; "" = no file).
  explicit Authenticator(deltaserve::v1::ServerConfig config, std::string config_path = "")
      : path_(std::move(config_path)), config_(std::make_shared<const deltaserve::v1::ServerConfig>(std::move(config))) {}

  // Reload reads the file again; on error the configuration in force stays and the error says
  // where the file is wrong.
  absl::Status Reload();
  // config: the configuration in force.
  std::shared_ptr<const deltaserve::v1::ServerConfig> config() const;
  // open: no tenants are configured.
  bool open() const;
  // Authenticate: UNAUTHENTICATED when the value is missing, not "Bearer <key>", or the key is
  // unknown (one message for all, so a caller learns nothing about which).
  absl::StatusOr<Principal> Authenticate(std::string_view authorization) const;

 private:
  std::string path_;
  mutable absl::Mutex mutex_;
  std::shared_ptr<const deltaserve::v1::ServerConfig> config_ ABSL_GUARDED_BY(mutex_);
};

// ApiKeyDigest: the hex SHA-256 of a key, as api_key_sha256 holds it.
std::string ApiKeyDigest(std::string_view key);

}  // namespace deltaserve::auth
