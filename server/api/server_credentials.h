// ServerCredentialsFor: the gRPC listening credentials from the TLS flags: plaintext without a
// certificate; TLS with --tls-cert and --tls-key (PEM files); mutual TLS when --tls-client-ca is
// also given (clients must present a certificate signed by that CA). INVALID_ARGUMENT for an
// incomplete set, NOT_FOUND for an unreadable file.
//   ASSIGN_OR_RETURN(auto credentials, ServerCredentialsFor(cert, key, client_ca));
#pragma once

#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>

#include "absl/status/statusor.h"

namespace deltaserve::api {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(const std::string& cert_path,
                                                                              const std::string& key_path,
                                                                              const std::string& client_ca_path);

}  // namespace deltaserve::api
