// Helpers shared by the integration tests: building Generate requests, running a stream to
// its end, reading one sample from a Prometheus scrape, and running deltactl.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "client/deltaserve_client.h"

namespace deltaserve::testing {

namespace v1 = deltaserve::v1;
using client::DeltaserveClient;

// A greedy request for max_tokens tokens that ignores end-of-sequence ("" = the base model).
v1::GenerateRequest Generate(const std::string& prompt, int max_tokens, const std::string& variant = "");

struct Stream {
  grpc::Status status;
  std::vector<v1::GenerateResponse> responses;
  std::string text;
  std::vector<int32_t> tokens;
};

// RunStream runs one Generate call to its end (cancel: see DeltaserveClient::Generate).
Stream RunStream(DeltaserveClient& client, const v1::GenerateRequest& request,
                 std::chrono::milliseconds timeout = std::chrono::seconds(120),
                 const std::function<bool()>& cancel = nullptr);

// Sample returns the value of the first line `name{...} value` or `name value`, or -1.
double Sample(const std::string& scrape, const std::string& name_and_labels);

// RunDeltactl runs DELTACTL_BINARY with `arguments` (shell words); returns its exit code and
// fills its stdout and stderr.
int RunDeltactl(const std::string& arguments, std::string* out, std::string* err);

}  // namespace deltaserve::testing
