#include "server/auth/server_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <regex>
#include <set>

#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"

namespace deltaserve::auth {
namespace {

namespace v1 = deltaserve::v1;

// Collects the parser's first error with its position (lines and columns 0-based in protobuf).
class FirstError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    if (!message_.empty()) return;
    message_ = absl::StrCat(line + 1, ":", column + 1, ": ", message);
  }
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

bool IsName(const std::string& name) {
  static const std::regex kName("[a-z0-9][a-z0-9._-]{0,63}");
  return std::regex_match(name, kName);
}

bool IsDigest(const std::string& digest) {
  static const std::regex kDigest("[0-9a-f]{64}");
  return std::regex_match(digest, kDigest);
}

absl::Status Check(const v1::ServerConfig& config, const std::string& source) {
  std::set<std::string> names, digests, namespaces;
  for (int i = 0; i < config.tenants_size(); ++i) {
    const v1::Tenant& tenant = config.tenants(i);
    auto invalid = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tenants[", i, "] (\"", tenant.name(), "\"): ", why));
    };
    if (!IsName(tenant.name())) return invalid("name must be [a-z0-9][a-z0-9._-]{0,63}");
    if (!names.insert(tenant.name()).second) return invalid("the name is used twice");
    if (tenant.role() == v1::TENANT_ROLE_UNSPECIFIED) return invalid("role is missing: TENANT or ADMIN");
    if (tenant.api_key_sha256().empty()) return invalid("no api_key_sha256 (deltactl keys hash prints one)");
    for (const std::string& digest : tenant.api_key_sha256()) {
      if (!IsDigest(digest)) return invalid("api_key_sha256 must be 64 lower-case hex digits (a SHA-256 digest, not a key)");
      if (!digests.insert(digest).second) return invalid("an api_key_sha256 is used twice");
    }
    if (tenant.role() == v1::TENANT && tenant.namespaces().empty()) return invalid("a TENANT needs namespaces");
    const v1::TenantQuotas& quotas = tenant.quotas();
    if (quotas.max_concurrent_requests() < 0 || quotas.generated_tokens_per_minute() < 0 || quotas.max_variants() < 0 ||
        quotas.max_running_jobs() < 0 || quotas.max_queued_requests() < 0 || quotas.max_stored_bytes() < 0) {
      return invalid("quotas must not be negative (0 = unlimited)");
    }
    if (!(tenant.weight() >= 0) || tenant.weight() > 1e6) return invalid("weight must be 0 (= 1) to 1e6");
    for (const std::string& name : tenant.namespaces()) {
      if (!IsName(name)) return invalid(absl::StrCat("namespace \"", name, "\" must be [a-z0-9][a-z0-9._-]{0,63}"));
      if (!namespaces.insert(name).second) return invalid(absl::StrCat("namespace \"", name, "\" belongs to two tenants"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::ServerConfig> ParseServerConfig(const std::string& text, const std::string& source) {
  v1::ServerConfig config;
  google::protobuf::TextFormat::Parser parser;
  FirstError errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ":", errors.message()));
  }
  if (absl::Status checked = Check(config, source); !checked.ok()) return checked;
  return config;
}

absl::StatusOr<v1::ServerConfig> LoadServerConfig(const std::string& path) {
  absl::StatusOr<std::string> text = common::ReadFileToString(path, 16u << 20);
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrCat("cannot read the config file ", path, ": ", text.status().message()));
  }
  return ParseServerConfig(*text, path);
}

}  // namespace deltaserve::auth
