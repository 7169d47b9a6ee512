#include "server/api/server_credentials.h"

#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"

namespace deltaserve::api {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* flag) {
  absl::StatusOr<std::string> pem = common::ReadFileToString(path, 1u << 20);
  if (!pem.ok()) return absl::NotFoundError(absl::StrCat(flag, " ", path, " cannot be read: ", pem.status().message()));
  return pem;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(const std::string& cert_path,
                                                                              const std::string& key_path,
                                                                              const std::string& client_ca_path) {
  if (cert_path.empty() && key_path.empty()) {
    if (!client_ca_path.empty()) return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    return grpc::InsecureServerCredentials();
  }
  if (cert_path.empty() || key_path.empty()) return absl::InvalidArgumentError("give both --tls-cert and --tls-key");
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(cert_path, "--tls-cert"));
  ASSIGN_OR_RETURN(pair.private_key, ReadPem(key_path, "--tls-key"));
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!client_ca_path.empty()) {
    ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(client_ca_path, "--tls-client-ca"));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

}  // namespace deltaserve::api
