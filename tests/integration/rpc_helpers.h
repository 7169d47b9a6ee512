// Helpers shared by the integration tests: building Generate requests, running a stream to
// its end, the Variants and Jobs calls several suites make, reading one sample from a
// Prometheus scrape, and running deltactl.
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

grpc::Status GetVariant(DeltaserveClient& client, const std::string& name, v1::Variant* variant);
// RegisterAdapter registers the adapter at `path` (under the server's --adapter-root) as `name`.
grpc::Status RegisterAdapter(DeltaserveClient& client, const std::string& name, const std::string& path,
                             v1::Variant* variant = nullptr);
// DeleteVariant deletes `name`; with drain, after the requests using it finish (60 s at most).
grpc::Status DeleteVariant(DeltaserveClient& client, const std::string& name, bool drain);

// Merge builds a merge request (rank 0 = the server's default).
v1::MergeRequest Merge(const std::string& method, const std::string& output,
                       const std::vector<std::pair<std::string, double>>& inputs, int rank = 0);
grpc::Status SubmitMerge(DeltaserveClient& client, const v1::MergeRequest& request, v1::Job* job);
grpc::Status SubmitFinetune(DeltaserveClient& client, const v1::FinetuneRequest& request, v1::Job* job);
grpc::Status SubmitUnlearn(DeltaserveClient& client, const v1::UnlearnRequest& request, v1::Job* job);
grpc::Status SubmitEdit(DeltaserveClient& client, const v1::EditRequest& request, v1::Job* job);
grpc::Status SubmitStats(DeltaserveClient& client, const v1::StatsRequest& request, v1::Job* job);
grpc::Status GetJob(DeltaserveClient& client, const std::string& id, v1::Job* job);
grpc::Status CancelJob(DeltaserveClient& client, const std::string& id, v1::Job* job);
// WatchJob follows a job to its end (at most 120 s) and returns every update it streamed; the
// call's status goes to `status`, or must be OK when none is given.
std::vector<v1::Job> WatchJob(DeltaserveClient& client, const std::string& id, grpc::Status* status = nullptr);

// ExpectSucceeds checks a job was accepted (`submitted`) and follows it (WatchJob) to SUCCEEDED;
// returns its last record (or `job` when there is none).
v1::Job ExpectSucceeds(DeltaserveClient& client, const grpc::Status& submitted, const v1::Job& job);
// Sample returns the value of the first line `name{...} value` or `name value`, or -1.
double Sample(const std::string& scrape, const std::string& name_and_labels);

// RunDeltactl runs DELTACTL_BINARY with `arguments` (shell words); returns its exit code and
// fills its stdout and stderr.
int RunDeltactl(const std::string& arguments, std::string* out, std::string* err);

}  // namespace deltaserve::testing
