#include "client/deltaserve_client.h"

#include <algorithm>
#include <fstream>

#include <grpcpp/create_channel.h>
#include <grpcpp/support/client_interceptor.h>

namespace deltaserve::client {
namespace {

// Sends "authorization: Bearer <key>" with every call on the channel.
class ApiKeyInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit ApiKeyInterceptor(const std::string& header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", header_});
    }
    methods->Proceed();
  }

 private:
  const std::string& header_;
};

class ApiKeyInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit ApiKeyInterceptorFactory(std::string key) : header_("Bearer " + std::move(key)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new ApiKeyInterceptor(header_);
  }

 private:
  const std::string header_;
};

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, const ConnectOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.tls_ca_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_ca_pem;
    ssl.pem_cert_chain = options.tls_cert_pem;
    ssl.pem_private_key = options.tls_key_pem;
    credentials = grpc::SslCredentials(ssl);
  }
  if (options.api_key.empty()) return grpc::CreateChannel(target, credentials);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<ApiKeyInterceptorFactory>(options.api_key));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, credentials, grpc::ChannelArguments(),
                                                                 std::move(interceptors));
}

void ApplyTimeout(grpc::ClientContext& context, std::chrono::milliseconds timeout) {
  if (timeout.count() > 0) context.set_deadline(std::chrono::system_clock::now() + timeout);
}

}  // namespace

std::unique_ptr<DeltaserveClient> DeltaserveClient::Connect(const std::string& target, const ConnectOptions& options) {
  return std::unique_ptr<DeltaserveClient>(new DeltaserveClient(target, options));
}

std::unique_ptr<DeltaserveClient> DeltaserveClient::Connect(const std::string& target, const std::string& api_key) {
  ConnectOptions options;
  options.api_key = api_key;
  return Connect(target, options);
}

DeltaserveClient::DeltaserveClient(const std::string& target, const ConnectOptions& options)
    : target_(target),
      channel_(MakeChannel(target, options)),
      generation_(deltaserve::v1::Generation::NewStub(channel_)),
      variants_(deltaserve::v1::Variants::NewStub(channel_)),
      jobs_(deltaserve::v1::Jobs::NewStub(channel_)),
      datasets_(deltaserve::v1::Datasets::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

grpc::Status DeltaserveClient::Generate(
    const deltaserve::v1::GenerateRequest& request,
    const std::function<void(const deltaserve::v1::GenerateResponse&)>& on_response,
    std::chrono::milliseconds timeout, const std::function<bool()>& cancel) {
  grpc::ClientContext context;
  ApplyTimeout(context, timeout);
  std::unique_ptr<grpc::ClientReader<deltaserve::v1::GenerateResponse>> reader =
      generation_->Generate(&context, request);
  deltaserve::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    on_response(response);
    if (cancel && cancel()) {
      context.TryCancel();
      break;
    }
  }
  return reader->Finish();
}

grpc::Status DeltaserveClient::Score(const deltaserve::v1::ScoreRequest& request,
                                     deltaserve::v1::ScoreResponse* response,
                                     std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  ApplyTimeout(context, timeout);
  return generation_->Score(&context, request, response);
}

grpc::Status DeltaserveClient::Tokenize(const deltaserve::v1::TokenizeRequest& request,
                                        deltaserve::v1::TokenizeResponse* response) {
  grpc::ClientContext context;
  return generation_->Tokenize(&context, request, response);
}

grpc::Status DeltaserveClient::Health(const std::string& service, HealthStatus* status) {
  grpc::ClientContext context;
  ApplyTimeout(context, std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status result = health_->Check(&context, request, &response);
  *status = HealthStatus::kUnknown;
  if (result.ok()) {
    *status = response.status() == grpc::health::v1::HealthCheckResponse::SERVING
                  ? HealthStatus::kServing
                  : HealthStatus::kNotServing;
  }
  return result;
}

bool DeltaserveClient::WaitForReady(std::chrono::milliseconds timeout) {
  return channel_->WaitForConnected(std::chrono::system_clock::now() + timeout);
}

std::string DescribeError(const std::string& target, const grpc::Status& status) {
  std::string code;
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      return "cannot reach " + target + " (is deltaserve running there?): " + status.error_message();
    case grpc::StatusCode::INVALID_ARGUMENT: code = "invalid request"; break;
    case grpc::StatusCode::NOT_FOUND: code = "not found"; break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: code = "server busy"; break;
    case grpc::StatusCode::DEADLINE_EXCEEDED: code = "deadline exceeded"; break;
    case grpc::StatusCode::ALREADY_EXISTS: code = "already exists"; break;
    case grpc::StatusCode::PERMISSION_DENIED: code = "permission denied"; break;
    case grpc::StatusCode::UNAUTHENTICATED: code = "not authenticated (give --api-key or set DELTASERVE_API_KEY)"; break;
    case grpc::StatusCode::FAILED_PRECONDITION: code = "not now"; break;
    default: code = "error " + std::to_string(status.error_code()); break;
  }
  return code + ": " + status.error_message();
}

grpc::Status DeltaserveClient::UploadAdapter(const std::string& name, const std::string& directory,
                                             deltaserve::v1::Variant* variant, size_t chunk_bytes,
                                             const UploadProgress& on_progress) {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientWriter<deltaserve::v1::UploadAdapterChunk>> writer =
      variants_->UploadAdapter(&context, variant);
  deltaserve::v1::UploadAdapterChunk header;
  header.mutable_header()->set_name(name);
  bool open = writer->Write(header);
  int64_t total = 0, sent = 0;
  for (const char* file : {"adapter_config.json", "adapter_model.safetensors"}) {
    std::ifstream size(directory + "/" + file, std::ios::binary | std::ios::ate);
    if (size) total += static_cast<int64_t>(size.tellg());
  }
  for (const char* file : {"adapter_config.json", "adapter_model.safetensors"}) {
    std::ifstream input(directory + "/" + file, std::ios::binary);
    if (!input) {
      context.TryCancel();
      writer->Finish().IgnoreError();
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "cannot read " + directory + "/" + file);
    }
    std::string buffer(chunk_bytes, '\0');
    while (open && input) {
      input.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      if (input.gcount() == 0) break;
      deltaserve::v1::UploadAdapterChunk chunk;
      chunk.mutable_file()->set_file_name(file);
      chunk.mutable_file()->set_data(buffer.data(), static_cast<size_t>(input.gcount()));
      open = writer->Write(chunk);
      sent += input.gcount();
      if (on_progress) on_progress(sent, total);
    }
  }
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status DeltaserveClient::UploadDataset(const std::string& name, const std::string& jsonl,
                                             deltaserve::v1::Dataset* dataset, size_t chunk_bytes,
                                             const UploadProgress& on_progress) {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientWriter<deltaserve::v1::UploadDatasetChunk>> writer =
      datasets_->UploadDataset(&context, dataset);
  deltaserve::v1::UploadDatasetChunk header;
  header.mutable_header()->set_name(name);
  bool open = writer->Write(header);
  for (size_t start = 0; open && start < jsonl.size(); start += chunk_bytes) {
    deltaserve::v1::UploadDatasetChunk chunk;
    chunk.set_data(jsonl.substr(start, chunk_bytes));
    open = writer->Write(chunk);
    if (on_progress) {
      on_progress(static_cast<int64_t>(std::min(jsonl.size(), start + chunk_bytes)), static_cast<int64_t>(jsonl.size()));
    }
  }
  writer->WritesDone();
  return writer->Finish();
}

}  // namespace deltaserve::client
