// DeadlineOf turns an RPC's gRPC deadline into absl::Time: absl::InfiniteFuture() when the
// caller set none (gRPC reports that as a time far in the future). For the sync and callback
// APIs alike.
//   request.deadline = DeadlineOf(*context);
#pragma once

#include <grpcpp/server_context.h>

#include "absl/time/time.h"

namespace deltaserve::api {

absl::Time DeadlineOf(const grpc::ServerContextBase& context);

}  // namespace deltaserve::api
