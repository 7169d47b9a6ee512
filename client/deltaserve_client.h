// DeltaserveClient: a small synchronous C++ client for deltaserve's gRPC API (Generation,
// Variants and gRPC health). One client per target; methods are thread-safe (gRPC stubs are).
// Variants, Jobs and Datasets calls go through variants(), jobs() and datasets() directly,
// except the uploads, which stream.
//   auto client = DeltaserveClient::Connect("127.0.0.1:50051");
//   grpc::Status status = client->Generate(request, [](const GenerateResponse& r) { ... });
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "deltaserve/v1/datasets.grpc.pb.h"
#include "deltaserve/v1/generation.grpc.pb.h"
#include "deltaserve/v1/jobs.grpc.pb.h"
#include "deltaserve/v1/variants.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace deltaserve::client {

enum class HealthStatus { kUnknown, kServing, kNotServing };

// How to reach a server. Without tls_ca_pem the channel is plaintext; with it, TLS that trusts
// that CA, presenting tls_cert_pem/tls_key_pem when given (mutual TLS). api_key, when set, goes
// with every call as "authorization: Bearer <api_key>".
struct ConnectOptions {
  std::string api_key;
  std::string tls_ca_pem;
  std::string tls_cert_pem;
  std::string tls_key_pem;
};

class DeltaserveClient {
 public:
  static std::unique_ptr<DeltaserveClient> Connect(const std::string& target, const ConnectOptions& options);
  // Connect: plaintext; with an api_key, every call sends "authorization: Bearer <api_key>".
  static std::unique_ptr<DeltaserveClient> Connect(const std::string& target, const std::string& api_key = "");

  // Generate calls on_response for every streamed message; a zero timeout means none.
  // cancel, when set, is checked before each message and cancels the call when it returns true.
  grpc::Status Generate(const deltaserve::v1::GenerateRequest& request,
                        const std::function<void(const deltaserve::v1::GenerateResponse&)>& on_response,
                        std::chrono::milliseconds timeout = std::chrono::milliseconds(0),
                        const std::function<bool()>& cancel = nullptr);
  grpc::Status Score(const deltaserve::v1::ScoreRequest& request,
                     deltaserve::v1::ScoreResponse* response,
                     std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  grpc::Status Tokenize(const deltaserve::v1::TokenizeRequest& request,
                        deltaserve::v1::TokenizeResponse* response);
  // Health asks grpc.health.v1 about `service` ("" = the whole server).
  grpc::Status Health(const std::string& service, HealthStatus* status);
  // UploadAdapter streams the PEFT adapter in `directory` (adapter_config.json and
  // adapter_model.safetensors, in chunks of chunk_bytes) to be served as `name`.
  // on_progress, when set, hears (bytes sent, bytes in all) after each chunk.
  using UploadProgress = std::function<void(int64_t, int64_t)>;
  grpc::Status UploadAdapter(const std::string& name, const std::string& directory,
                             deltaserve::v1::Variant* variant, size_t chunk_bytes = 1 << 20,
                             const UploadProgress& on_progress = nullptr);
  deltaserve::v1::Variants::Stub& variants() { return *variants_; }
  // UploadDataset streams JSONL bytes (in chunks of chunk_bytes) as dataset `name`.
  grpc::Status UploadDataset(const std::string& name, const std::string& jsonl, deltaserve::v1::Dataset* dataset,
                             size_t chunk_bytes = 1 << 20, const UploadProgress& on_progress = nullptr);
  deltaserve::v1::Jobs::Stub& jobs() { return *jobs_; }
  deltaserve::v1::Datasets::Stub& datasets() { return *datasets_; }
  // WaitForReady blocks until the channel connects or the timeout passes.
  bool WaitForReady(std::chrono::milliseconds timeout);

  const std::string& target() const { return target_; }

 private:
  DeltaserveClient(const std::string& target, const ConnectOptions& options);
  std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<deltaserve::v1::Generation::Stub> generation_;
  std::unique_ptr<deltaserve::v1::Variants::Stub> variants_;
  std::unique_ptr<deltaserve::v1::Jobs::Stub> jobs_;
  std::unique_ptr<deltaserve::v1::Datasets::Stub> datasets_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// DescribeError turns a failed status into one line that says what to do, e.g. for a server
// that is down: "cannot reach 127.0.0.1:50051 (is deltaserve running?): ...".
std::string DescribeError(const std::string& target, const grpc::Status& status);

}  // namespace deltaserve::client
