// Integration: two replicas on loopback sharing nothing but a directory (--shared-dir). A merge
// job's output on replica A serves on replica B at once (fetched on B's first request) with the
// same tokens; its lineage travels with it; deleting it on A withdraws it from B; an artifact
// whose file does not match its manifest's hash is refused by both, and never served.
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "server/common/file_util.h"
#include "tests/integration/http_client.h"
#include "tests/integration/rpc_helpers.h"
#include "tests/integration/server_process.h"
#include "tests/support/test_models.h"
#include "tests/support/wait_until.h"
#include "tools/demo_model.h"

namespace deltaserve::testing {
namespace {

namespace fs = std::filesystem;

class ReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    adapters_ = MakeTempDir("replica-adapters");
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), adapters_, 2, 4).ok());
    shared_ = MakeTempDir("replica-shared");
    const std::vector<std::string> flags = {"--adapter-dir", adapters_, "--shared-dir", shared_,
                                            "--shared-poll-seconds", "0.2"};
    ASSERT_TRUE(a_.Start(TinyModelDir(), flags));
    ASSERT_TRUE(b_.Start(TinyModelDir(), flags));
    client_a_ = DeltaserveClient::Connect(a_.target());
    client_b_ = DeltaserveClient::Connect(b_.target());
  }

  std::string adapters_, shared_;
  ServerProcess a_, b_;
  std::unique_ptr<DeltaserveClient> client_a_, client_b_;
};

TEST_F(ReplicasTest, AMergeOnOneReplicaServesOnTheOther) {
  v1::Job job;
  ExpectSucceeds(*client_a_, SubmitMerge(*client_a_, Merge("cat", "team/merged", {{"demo-000", 0.7}, {"demo-001", 0.3}}), &job),
                 job);
  // B has not polled yet, perhaps: its first request fetches the variant.
  Stream on_b = RunStream(*client_b_, Generate("the cat reads", 12, "team/merged"));
  ASSERT_TRUE(on_b.status.ok()) << on_b.status.error_message() << "\n" << b_.Log();
  Stream on_a = RunStream(*client_a_, Generate("the cat reads", 12, "team/merged"));
  ASSERT_TRUE(on_a.status.ok()) << on_a.status.error_message();
  EXPECT_EQ(on_b.tokens, on_a.tokens);
  Stream base = RunStream(*client_b_, Generate("the cat reads", 12));
  EXPECT_NE(base.tokens, on_b.tokens) << "the merged adapter changed nothing";
  v1::Variant variant;
  ASSERT_TRUE(GetVariant(*client_b_, "team/merged", &variant).ok());
  EXPECT_EQ(variant.kind(), v1::MERGE);
  EXPECT_EQ(variant.lineage().parents_size(), 2);
  // Over B's HTTP API too.
  EXPECT_NE(HttpCall(b_.http_port(), "GET", "/v1/models").body.find("team/merged"), std::string::npos);

  // Deleted on A: B stops serving it within a few polls.
  {
    grpc::ClientContext context;
    v1::DeleteVariantRequest request;
    request.set_name("team/merged");
    v1::DeleteVariantResponse response;
    ASSERT_TRUE(client_a_->variants().DeleteVariant(&context, request, &response).ok());
  }
  grpc::Status gone;
  WaitUntil([&] {  // b learns of it at its next poll of the shared directory
    gone = GetVariant(*client_b_, "team/merged", &variant);
    return gone.error_code() == grpc::StatusCode::NOT_FOUND;
  });
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::NOT_FOUND) << b_.Log();
  EXPECT_EQ(RunStream(*client_b_, Generate("the cat reads", 4, "team/merged")).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ReplicasTest, ACorruptedArtifactIsRefusedByItsHash) {
  v1::Job job;
  ExpectSucceeds(*client_a_, SubmitMerge(*client_a_, Merge("cat", "good", {{"demo-000", 1.0}}), &job), job);
  const std::string good = shared_ + "/variants/good/1";
  ASSERT_TRUE(fs::exists(good + "/manifest.json"));
  // A forged copy: the manifest of "good" under another name, with one byte of the weights flipped.
  const std::string staging = shared_ + "/tmp/forging";
  fs::copy(good, staging, fs::copy_options::recursive);
  {
    std::ifstream in(staging + "/manifest.json");
    std::string manifest((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = manifest.find("\"good\"");
    ASSERT_NE(at, std::string::npos);
    manifest.replace(at, 6, "\"forged\"");
    ASSERT_TRUE(common::WriteFileAtomically(staging + "/manifest.json", manifest).ok());
    std::fstream weights(staging + "/adapter_model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    weights.seekg(-4, std::ios::end);
    char byte = 0;
    weights.read(&byte, 1);
    weights.seekp(-4, std::ios::end);
    byte = static_cast<char>(byte ^ 0x5a);
    weights.write(&byte, 1);
  }
  fs::create_directories(shared_ + "/variants/forged");
  fs::rename(staging, shared_ + "/variants/forged/1");
  for (DeltaserveClient* client : {client_a_.get(), client_b_.get()}) {
    Stream refused = RunStream(*client, Generate("the cat reads", 4, "forged"));
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << refused.status.error_message();
    EXPECT_NE(refused.status.error_message().find("SHA-256"), std::string::npos) << refused.status.error_message();
    v1::Variant variant;
    EXPECT_EQ(GetVariant(*client, "forged", &variant).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // The genuine one still serves on B.
  EXPECT_TRUE(RunStream(*client_b_, Generate("the cat reads", 4, "good")).status.ok());
}

}  // namespace
}  // namespace deltaserve::testing
