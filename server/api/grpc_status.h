// The one mapping from absl::Status to grpc::Status (codes share numbering; the message is
// kept). GrpcCodeName gives the canonical upper-case name used in metrics labels.
#pragma once

#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace deltaserve::api {

grpc::Status ToGrpcStatus(const absl::Status& status);
std::string GrpcCodeName(grpc::StatusCode code);

}  // namespace deltaserve::api
