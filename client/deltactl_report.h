// ReportStatus: how every deltactl command ends. OK gives exit code 0; an error prints one line
// saying what to do (DescribeError) to stderr and gives 1.
#pragma once

#include <cstdio>

#include "client/deltaserve_client.h"

namespace deltaserve::client {

inline int ReportStatus(DeltaserveClient& client, const grpc::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "deltactl: %s\n", DescribeError(client.target(), status).c_str());
  return 1;
}

}  // namespace deltaserve::client
