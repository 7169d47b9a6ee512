#include "server/auth/authenticator.h"

#include "server/auth/server_config.h"
#include "server/common/sha256.h"

namespace deltaserve::auth {
namespace {

namespace v1 = deltaserve::v1;

// SameDigest compares two equal-length strings without an early exit.
bool SameDigest(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < a.size(); ++i) difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  return difference == 0;
}

}  // namespace

std::string ApiKeyDigest(std::string_view key) { return common::Sha256Hex(key); }

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const std::string& config_path) {
  v1::ServerConfig config;
  if (!config_path.empty()) {
    absl::StatusOr<v1::ServerConfig> loaded = LoadServerConfig(config_path);
    if (!loaded.ok()) return loaded.status();
    config = std::move(*loaded);
  }
  return std::make_unique<Authenticator>(std::move(config), config_path);
}

std::shared_ptr<const v1::ServerConfig> Authenticator::config() const {
  absl::MutexLock lock(&mutex_);
  return config_;
}

absl::Status Authenticator::Reload() {
  if (path_.empty()) return absl::FailedPreconditionError("the server was started without --config");
  absl::StatusOr<v1::ServerConfig> loaded = LoadServerConfig(path_);
  if (!loaded.ok()) return loaded.status();
  auto config = std::make_shared<const v1::ServerConfig>(std::move(*loaded));
  absl::MutexLock lock(&mutex_);
  config_ = std::move(config);
  return absl::OkStatus();
}

bool Authenticator::open() const {
  absl::MutexLock lock(&mutex_);
  return config_->tenants().empty();
}

absl::StatusOr<Principal> Authenticator::Authenticate(std::string_view authorization) const {
  std::shared_ptr<const v1::ServerConfig> config;
  {
    absl::MutexLock lock(&mutex_);
    config = config_;
  }
  if (config->tenants().empty()) return Principal{"", true, {}, {}, 1.0};
  const absl::Status refused = absl::UnauthenticatedError(
      "a valid API key is required: send the metadata \"authorization: Bearer <key>\" (deltactl --api-key)");
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.substr(0, kScheme.size()) != kScheme) return refused;
  const std::string digest = ApiKeyDigest(authorization.substr(kScheme.size()));
  // Every digest of every tenant is compared, whatever matched before.
  const v1::Tenant* found = nullptr;
  for (const v1::Tenant& tenant : config->tenants()) {
    for (const std::string& candidate : tenant.api_key_sha256()) {
      if (SameDigest(digest, candidate)) found = &tenant;
    }
  }
  if (found == nullptr) return refused;
  Principal principal{found->name(), found->role() == v1::ADMIN,
                      std::vector<std::string>(found->namespaces().begin(), found->namespaces().end()), {}, 1.0};
  principal.quotas = found->quotas();
  if (found->weight() > 0) principal.weight = found->weight();
  return principal;
}

}  // namespace deltaserve::auth
