// Integration: requests whose bytes do not parse as their message type (garbage, or invalid
// UTF-8 in a proto3 string field) get INVALID_ARGUMENT saying what could not be parsed, over
// callback services (unary and server-streaming) and synchronous ones alike; gRPC's own answer
// would be UNIMPLEMENTED with no message, or INTERNAL.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <string>

#include <gtest/gtest.h>

#include "deltaserve/v1/generation.pb.h"
#include "tests/integration/shared_server.h"

namespace deltaserve::testing {
namespace {

class UnparseableRequestsTest : public SharedServerTest<UnparseableRequestsTest> {
 protected:
  static void SetUpTestSuite() { StartServer(); }

  // Call sends `bytes` as the one request of `method` and returns the call's status (after
  // reading and dropping any responses).
  grpc::Status Call(const std::string& method, const std::string& bytes) {
    auto channel = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
    grpc::GenericStub stub(channel);
    grpc::CompletionQueue queue;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call = stub.PrepareCall(&context, method, &queue);
    void* tag = nullptr;
    bool ok = false;
    auto step = [&](void* expected) {
      EXPECT_TRUE(queue.Next(&tag, &ok));
      EXPECT_EQ(tag, expected);
      return ok;
    };
    call->StartCall(reinterpret_cast<void*>(1));
    step(reinterpret_cast<void*>(1));
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    call->Write(request, reinterpret_cast<void*>(2));
    step(reinterpret_cast<void*>(2));
    call->WritesDone(reinterpret_cast<void*>(3));
    step(reinterpret_cast<void*>(3));
    grpc::ByteBuffer response;
    while (true) {
      call->Read(&response, reinterpret_cast<void*>(4));
      if (!step(reinterpret_cast<void*>(4))) break;
    }
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(5));
    step(reinterpret_cast<void*>(5));
    return status;
  }
};

// A TokenizeRequest whose text is invalid UTF-8.
std::string InvalidUtf8Request() {
  v1::TokenizeRequest request;
  request.set_text("ok");
  std::string bytes = request.SerializeAsString();
  const size_t at = bytes.find("ok");
  bytes[at] = static_cast<char>(0xff);
  bytes[at + 1] = static_cast<char>(0xfe);
  return bytes;
}

TEST_F(UnparseableRequestsTest, InvalidUtf8GetsInvalidArgumentNamingTheField) {
  const grpc::Status status = Call("/deltaserve.v1.Generation/Tokenize", InvalidUtf8Request());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("deltaserve.v1.TokenizeRequest"), std::string::npos) << status.error_message();
  EXPECT_NE(status.error_message().find("invalid UTF-8"), std::string::npos) << status.error_message();
  EXPECT_NE(status.error_message().find("TokenizeRequest.text"), std::string::npos) << status.error_message();
}

TEST_F(UnparseableRequestsTest, GarbageGetsInvalidArgumentOverEveryKindOfMethod) {
  const std::string garbage = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x02";
  for (const char* method : {"/deltaserve.v1.Generation/Generate", "/deltaserve.v1.Generation/Score",
                             "/deltaserve.v1.Jobs/SubmitMerge", "/deltaserve.v1.Jobs/WatchJob",
                             "/deltaserve.v1.Variants/GetVariant", "/deltaserve.v1.Datasets/ListDatasets"}) {
    const grpc::Status status = Call(method, garbage);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method << ": " << status.error_message();
    EXPECT_NE(status.error_message().find("could not be parsed"), std::string::npos) << status.error_message();
  }
  for (const char* method : {"/deltaserve.v1.Variants/UploadAdapter", "/deltaserve.v1.Datasets/UploadDataset"}) {
    // A stream's chunk that does not parse reads as the stream's end: the upload is refused as
    // incomplete, and nothing is stored.
    EXPECT_EQ(Call(method, garbage).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
  }
  // The server goes on serving well-formed requests.
  v1::TokenizeRequest good;
  good.set_text("the cat");
  EXPECT_TRUE(Call("/deltaserve.v1.Generation/Tokenize", good.SerializeAsString()).ok());
}

}  // namespace
}  // namespace deltaserve::testing
