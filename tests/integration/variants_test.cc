// Integration: the Variants service on the real server. Uploads become servable at once and
// invalid ones leave nothing behind; server paths must lie under --adapter-root; deleting is
// refused while requests use a variant or drains them; the adapter cache, whose device budget
// here holds three tiny adapters, evicts, pins and frees as its metrics show; lists page; and
// deltactl drives all of it.
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/integration/rpc_helpers.h"
#include "tests/integration/server_process.h"
#include "tests/integration/shared_server.h"
#include "server/common/file_util.h"
#include "tests/support/test_models.h"
#include "tests/support/wait_until.h"
#include "tools/demo_model.h"

namespace deltaserve::testing {
namespace {

constexpr int64_t kTinyRank4AdapterBytes = 35840;

class VariantsServerTest : public SharedServerTest<VariantsServerTest> {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(MakeTempDir("adapter-root"));
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), *root_, 8, 4).ok());
    outside_ = new std::string(MakeTempDir("outside-root"));
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), *outside_, 1, 4, 50).ok());
    ASSERT_EQ(::symlink((*outside_ + "/demo-000").c_str(), (*root_ + "/escape").c_str()), 0);
    StartServer({"--adapter-root", *root_, "--adapter-cache-bytes", std::to_string(3 * kTinyRank4AdapterBytes),
                 "--max-upload-bytes", "1000000"});
  }

  // The RPC helpers on this suite's server.
  static grpc::Status Register(const std::string& name, const std::string& path,
                               v1::Variant* variant = nullptr) {
    return RegisterAdapter(*client_, name, path, variant);
  }
  static grpc::Status Get(const std::string& name, v1::Variant* variant) {
    return GetVariant(*client_, name, variant);
  }
  static grpc::Status Delete(const std::string& name, bool drain) { return DeleteVariant(*client_, name, drain); }
  static Stream Run(const std::string& variant, int max_tokens = 8) {
    return RunStream(*client_, Generate("the cat reads", max_tokens, variant));
  }
  static std::string Scrape() { return HttpGet(server_->metrics_port(), "/metrics"); }

  static inline std::string* root_ = nullptr;
  static inline std::string* outside_ = nullptr;
};

TEST_F(VariantsServerTest, AnUploadedAdapterServesAtOnceLikeTheSameFilesRegistered) {
  const std::string local = MakeTempDir("upload-source");
  ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), local, 1, 4, 77).ok());
  v1::Variant uploaded;
  grpc::Status status = client_->UploadAdapter("acme/uploaded", local + "/demo-000", &uploaded, 4096);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(uploaded.name(), "acme/uploaded");
  EXPECT_EQ(uploaded.kind(), v1::ADAPTER);
  EXPECT_EQ(uploaded.size_bytes(), kTinyRank4AdapterBytes);
  EXPECT_TRUE(uploaded.uploaded());
  ASSERT_EQ(uploaded.ranks_size(), 7);
  EXPECT_EQ(uploaded.ranks(0).module(), "q_proj");
  EXPECT_EQ(uploaded.ranks(0).rank(), 4);
  EXPECT_GT(uploaded.created().seconds(), 1700000000);

  Stream served = Run("acme/uploaded");
  ASSERT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_NE(served.tokens, Run("").tokens);
  // Independent path: the same files copied under the root and registered by path.
  const std::string copy = *root_ + "/copy-of-upload";
  ASSERT_EQ(std::system(("cp -r " + local + "/demo-000 " + copy).c_str()), 0);
  ASSERT_TRUE(Register("registered-copy", "copy-of-upload").ok());
  EXPECT_EQ(Run("registered-copy").tokens, served.tokens);

  v1::Variant again;
  EXPECT_EQ(client_->UploadAdapter("acme/uploaded", local + "/demo-000", &again).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
}

TEST_F(VariantsServerTest, InvalidUploadsAreRefusedWithTheReasonAndLeaveNothing) {
  const std::string local = MakeTempDir("bad-uploads");
  ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), local, 1, 4).ok());
  const std::string good = local + "/demo-000";
  auto upload = [&](const std::string& name, const std::vector<std::pair<std::string, std::string>>& files) {
    grpc::ClientContext context;
    v1::Variant variant;
    auto writer = client_->variants().UploadAdapter(&context, &variant);
    v1::UploadAdapterChunk header;
    header.mutable_header()->set_name(name);
    writer->Write(header);
    for (const auto& [file, data] : files) {
      v1::UploadAdapterChunk chunk;
      chunk.mutable_file()->set_file_name(file);
      chunk.mutable_file()->set_data(data);
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  };
  auto read = [](const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(file), {});
  };
  const std::string config = read(good + "/adapter_config.json");
  const std::string weights = read(good + "/adapter_model.safetensors");

  grpc::Status missing = upload("bad-1", {{"adapter_config.json", config}});
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(missing.error_message().find("adapter_model.safetensors"), std::string::npos) << missing.error_message();
  grpc::Status pickle = upload("bad-2", {{"adapter_config.json", config}, {"adapter_model.bin", "x"}});
  EXPECT_EQ(pickle.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(pickle.error_message().find("pickle"), std::string::npos) << pickle.error_message();
  grpc::Status json = upload("bad-3", {{"adapter_config.json", "{not json"}, {"adapter_model.safetensors", weights}});
  EXPECT_EQ(json.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << json.error_message();
  // Weights for another base: the small model's shapes do not fit the tiny one.
  tools::DemoModelOptions small;
  small.size = "small";
  const std::string other = WriteModel(small, "other-base");
  ASSERT_TRUE(tools::WriteDemoAdapters(other, other + "/adapters", 1, 4).ok());
  grpc::Status shapes = upload("bad-4", {{"adapter_config.json", config},
                                         {"adapter_model.safetensors", read(other + "/adapters/demo-000/adapter_model.safetensors")}});
  EXPECT_EQ(shapes.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(shapes.error_message().find("lora_A.weight"), std::string::npos) << shapes.error_message();
  grpc::Status too_big = upload("bad-5", {{"adapter_config.json", config},
                                          {"adapter_model.safetensors", std::string(1000001, 'x')}});
  EXPECT_EQ(too_big.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(too_big.error_message().find("--max-upload-bytes"), std::string::npos) << too_big.error_message();
  grpc::Status bad_name = upload("Bad Name", {{"adapter_config.json", config}, {"adapter_model.safetensors", weights}});
  EXPECT_EQ(bad_name.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Weights and scales that would serve NaN: every byte of one lora_B set (all-ones bits are a
  // NaN in every float format), and a lora_alpha of 1e308.
  std::string nan_weights = weights;
  uint64_t header_size = 0;
  std::memcpy(&header_size, nan_weights.data(), sizeof(header_size));
  const nlohmann::json header = nlohmann::json::parse(nan_weights.substr(8, header_size));
  std::string spoiled_tensor;
  for (const auto& [name, entry] : header.items()) {
    if (name.find("lora_B") == std::string::npos || !spoiled_tensor.empty()) continue;
    spoiled_tensor = name;
    const size_t begin = 8 + header_size + entry["data_offsets"][0].get<size_t>();
    const size_t end = 8 + header_size + entry["data_offsets"][1].get<size_t>();
    std::fill(nan_weights.begin() + begin, nan_weights.begin() + end, '\xff');
  }
  ASSERT_FALSE(spoiled_tensor.empty());
  grpc::Status nan = upload("bad-6", {{"adapter_config.json", config}, {"adapter_model.safetensors", nan_weights}});
  EXPECT_EQ(nan.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(nan.error_message().find(spoiled_tensor + " has non-finite values"), std::string::npos) << nan.error_message();
  nlohmann::json huge_alpha = nlohmann::json::parse(config);
  huge_alpha["lora_alpha"] = 1e308;
  grpc::Status alpha = upload("bad-7", {{"adapter_config.json", huge_alpha.dump()}, {"adapter_model.safetensors", weights}});
  EXPECT_EQ(alpha.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(alpha.error_message().find("(lora_alpha / r); it must be finite and at most 1000"), std::string::npos)
      << alpha.error_message();

  for (const char* name : {"bad-1", "bad-2", "bad-3", "bad-4", "bad-5", "bad-6", "bad-7"}) {
    v1::Variant variant;
    EXPECT_EQ(Get(name, &variant).error_code(), grpc::StatusCode::NOT_FOUND) << name;
  }
}

TEST_F(VariantsServerTest, RegisterAdapterOnlyReadsInsideTheRoots) {
  v1::Variant variant;
  ASSERT_TRUE(Register("by-relative-path", "demo-001", &variant).ok());
  EXPECT_FALSE(variant.uploaded());
  EXPECT_TRUE(Register("by-absolute-path", *root_ + "/demo-002").ok());

  grpc::Status dots = Register("dots", "../outside/demo-000");
  EXPECT_EQ(dots.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(dots.error_message().find(".."), std::string::npos);
  grpc::Status outside = Register("outside", *outside_ + "/demo-000");
  EXPECT_EQ(outside.error_code(), grpc::StatusCode::PERMISSION_DENIED) << outside.error_message();
  grpc::Status escape = Register("escape", "escape");  // a symlink out of the root
  EXPECT_EQ(escape.error_code(), grpc::StatusCode::PERMISSION_DENIED) << escape.error_message();
  grpc::Status system_path = Register("etc", "/etc");
  EXPECT_EQ(system_path.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  grpc::Status missing = Register("missing", "no-such-adapter");
  EXPECT_NE(missing.error_code(), grpc::StatusCode::OK);
  for (const char* name : {"dots", "outside", "escape", "etc", "missing"}) {
    EXPECT_EQ(Get(name, &variant).error_code(), grpc::StatusCode::NOT_FOUND) << name;
  }
}

TEST_F(VariantsServerTest, DeleteIsRefusedWhileInUseAndDrainWaitsForRunningRequests) {
  ASSERT_TRUE(Register("busy", "demo-003").ok());
  grpc::Status refused;
  int seen = 0;
  Stream cancelled = RunStream(*client_, Generate("the cat", 2000, "busy"), std::chrono::seconds(60), [&] {
    if (++seen == 2) refused = Delete("busy", /*drain=*/false);
    return seen >= 2;
  });
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << refused.error_message();
  v1::Variant variant;
  ASSERT_TRUE(Get("busy", &variant).ok()) << "a refused delete keeps the variant";
  // Once the cancelled request has left the engine, a plain delete goes through.
  grpc::Status deleted;
  testing::WaitUntil([&] {
    deleted = Delete("busy", false);
    return deleted.ok();
  });
  ASSERT_TRUE(deleted.ok()) << deleted.error_message();
  EXPECT_EQ(Get("busy", &variant).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Run("busy").status.error_code(), grpc::StatusCode::NOT_FOUND);

  // Drain: the running request finishes in full; requests after the delete began are refused.
  ASSERT_TRUE(Register("draining", "demo-004").ok());
  grpc::Status drained, late;
  std::thread deleter;
  int tokens_seen = 0;
  Stream finished = RunStream(*client_, Generate("the cat", 60, "draining"), std::chrono::seconds(60), [&] {
    if (++tokens_seen == 2) {
      deleter = std::thread([&] { drained = Delete("draining", /*drain=*/true); });
      // Once the name no longer resolves the delete has begun: later requests are refused.
      EXPECT_TRUE(testing::WaitUntil([&] { return !Get("draining", &variant).ok(); }));
      late = Run("draining").status;
    }
    return false;
  });
  deleter.join();
  ASSERT_TRUE(finished.status.ok()) << finished.status.error_message();
  EXPECT_EQ(finished.tokens.size(), 60u);
  EXPECT_TRUE(drained.ok()) << drained.error_message();
  EXPECT_EQ(late.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(VariantsServerTest, TheCacheEvictsPinsAndFreesAsItsMetricsShow) {
  const std::vector<std::string> names = {"cache-0", "cache-1", "cache-2", "cache-3", "cache-4"};
  for (size_t i = 0; i < names.size(); ++i) {
    ASSERT_TRUE(Register(names[i], "demo-00" + std::to_string(i)).ok());
  }
  std::map<std::string, std::vector<int32_t>> first;
  for (const std::string& name : names) first[name] = Run(name).tokens;
  // Cycling five adapters through a device that holds three loads and evicts; outputs stay.
  for (const std::string& name : names) {
    Stream again = Run(name);
    ASSERT_TRUE(again.status.ok()) << again.status.error_message();
    EXPECT_EQ(again.tokens, first[name]) << name;
  }
  std::string scrape = Scrape();
  EXPECT_GT(Sample(scrape, "deltaserve_adapter_loads_total{from=\"host\"}"), 0) << scrape;
  EXPECT_GT(Sample(scrape, "deltaserve_adapter_evictions_total{from=\"device\"}"), 0);
  EXPECT_LE(Sample(scrape, "deltaserve_adapter_resident_bytes{tier=\"device\"}"), 3 * kTinyRank4AdapterBytes);
  EXPECT_GE(Sample(scrape, "deltaserve_adapter_load_seconds_count"), 1);
  EXPECT_EQ(Sample(scrape, "deltaserve_requests_waiting_for_adapter"), 0);

  // A pinned adapter stays on the device however the others cycle.
  grpc::ClientContext pin_context;
  v1::PinVariantRequest pin;
  pin.set_name("cache-0");
  v1::Variant pinned;
  ASSERT_TRUE(client_->variants().PinVariant(&pin_context, pin, &pinned).ok());
  EXPECT_TRUE(pinned.pinned());
  for (int round = 0; round < 2; ++round) {
    for (size_t i = 1; i < names.size(); ++i) ASSERT_TRUE(Run(names[i]).status.ok());
  }
  v1::Variant state;
  ASSERT_TRUE(Get("cache-0", &state).ok());
  EXPECT_EQ(state.residency(), v1::DEVICE);
  EXPECT_TRUE(state.pinned());

  // Deleting frees its bytes from whichever tier held it.
  auto total_bytes = [&] {
    std::string now = Scrape();
    return Sample(now, "deltaserve_adapter_resident_bytes{tier=\"device\"}") +
           Sample(now, "deltaserve_adapter_resident_bytes{tier=\"host\"}") +
           Sample(now, "deltaserve_adapter_resident_bytes{tier=\"disk\"}");
  };
  const double before = total_bytes();
  ASSERT_TRUE(Delete("cache-0", false).ok());
  EXPECT_EQ(total_bytes(), before - kTinyRank4AdapterBytes);
}

TEST_F(VariantsServerTest, ListsPageInNameOrderAndFilterByPrefix) {
  for (const char* name : {"list/a", "list/b", "list/c", "list/d", "list/e"}) {
    ASSERT_TRUE(Register(name, "demo-005").ok());
  }
  std::vector<std::string> seen;
  v1::ListVariantsRequest request;
  request.set_prefix("list/");
  request.set_page_size(2);
  int pages = 0;
  do {
    grpc::ClientContext context;
    v1::ListVariantsResponse response;
    ASSERT_TRUE(client_->variants().ListVariants(&context, request, &response).ok());
    for (const v1::Variant& variant : response.variants()) seen.push_back(variant.name());
    request.set_page_token(response.next_page_token());
    ++pages;
  } while (!request.page_token().empty() && pages < 10);
  EXPECT_EQ(seen, (std::vector<std::string>{"list/a", "list/b", "list/c", "list/d", "list/e"}));
  EXPECT_EQ(pages, 3);

  grpc::ClientContext context;
  v1::ListVariantsResponse response;
  request.set_page_size(5000);
  EXPECT_EQ(client_->variants().ListVariants(&context, request, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(VariantsServerTest, DeltactlManagesVariants) {
  const std::string local = MakeTempDir("deltactl-upload");
  ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), local, 1, 4, 31).ok());
  const std::string target = " --target " + server_->target();
  std::string out, err;
  ASSERT_EQ(RunDeltactl("variants upload --progress=always" + target + " cli/up " + local + "/demo-000", &out, &err), 0)
      << err;
  EXPECT_NE(out.find("name:      cli/up"), std::string::npos) << out;
  EXPECT_NE(err.find("upload cli/up [########################] 100%"), std::string::npos) << err;
  ASSERT_EQ(RunDeltactl("variants register" + target + " cli/reg demo-006", &out, &err), 0) << err;
  ASSERT_EQ(RunDeltactl("variants pin" + target + " cli/reg", &out, &err), 0) << err;
  EXPECT_NE(out.find("(pinned)"), std::string::npos) << out;
  ASSERT_EQ(RunDeltactl("variants unpin" + target + " cli/reg", &out, &err), 0) << err;
  ASSERT_EQ(RunDeltactl("variants list" + target + " --prefix cli/", &out, &err), 0) << err;
  EXPECT_NE(out.find("cli/reg"), std::string::npos);
  EXPECT_NE(out.find("cli/up"), std::string::npos);
  ASSERT_EQ(RunDeltactl("generate" + target + " --variant cli/up --max-tokens 4 'the cat'", &out, &err), 0) << err;
  ASSERT_EQ(RunDeltactl("variants delete" + target + " cli/up", &out, &err), 0) << err;
  EXPECT_EQ(RunDeltactl("variants get" + target + " cli/up", &out, &err), 1);
  EXPECT_NE(err.find("not found"), std::string::npos) << err;
  EXPECT_EQ(RunDeltactl("variants register" + target + " cli/x ../etc", &out, &err), 1);
  EXPECT_NE(err.find(".."), std::string::npos) << err;
}

TEST(VariantsRestartTest, UploadedAdaptersSurviveARestartAndRegisterIsOffWithoutRoots) {
  const std::string data_dir = MakeTempDir("restart-data");
  const std::string local = MakeTempDir("restart-upload");
  ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), local, 1, 4, 5).ok());
  std::vector<int32_t> tokens;
  {
    ServerProcess server;
    ASSERT_TRUE(server.Start(TinyModelDir(), {"--data-dir", data_dir}));
    auto client = DeltaserveClient::Connect(server.target());
    v1::Variant variant;
    ASSERT_TRUE(client->UploadAdapter("keep/me", local + "/demo-000", &variant).ok());
    tokens = RunStream(*client, Generate("the cat reads", 6, "keep/me")).tokens;
    ASSERT_EQ(tokens.size(), 6u);
    grpc::Status off = RegisterAdapter(*client, "x", local + "/demo-000");
    EXPECT_EQ(off.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(off.error_message().find("--adapter-root"), std::string::npos);
  }
  ServerProcess restarted;
  ASSERT_TRUE(restarted.Start(TinyModelDir(), {"--data-dir", data_dir}));
  auto client = DeltaserveClient::Connect(restarted.target());
  Stream stream = RunStream(*client, Generate("the cat reads", 6, "keep/me"));
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ(stream.tokens, tokens);
}

TEST(VariantsRestartTest, TheCatalogRestoresVariantsMarksBrokenOnesAndDropsStrayUploads) {
  const std::string data_dir = MakeTempDir("catalog-data");
  const std::string root = MakeTempDir("catalog-root");
  ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), root, 2, 4, 40).ok());
  int64_t created = 0;
  {
    ServerProcess server;
    ASSERT_TRUE(server.Start(TinyModelDir(), {"--data-dir", data_dir, "--adapter-root", root}));
    auto client = DeltaserveClient::Connect(server.target());
    v1::Variant variant;
    ASSERT_TRUE(RegisterAdapter(*client, "reg/one", "demo-000").ok());
    ASSERT_TRUE(client->UploadAdapter("up/two", root + "/demo-001", &variant).ok());
    created = variant.created().seconds();
  }
  // The registered directory disappears, and an upload's directory without a row appears.
  ASSERT_EQ(std::system(("rm -rf " + root + "/demo-000").c_str()), 0);
  ASSERT_EQ(std::system(("mkdir -p " + data_dir + "/adapters/stray && cp -r " + root + "/demo-001 " +
                         data_dir + "/adapters/stray/x").c_str()), 0);

  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir(), {"--data-dir", data_dir, "--adapter-root", root}));
  auto client = DeltaserveClient::Connect(server.target());
  v1::Variant broken, kept;
  ASSERT_TRUE(GetVariant(*client, "reg/one", &broken).ok());
  EXPECT_EQ(broken.state(), v1::BROKEN);
  EXPECT_FALSE(broken.state_reason().empty());
  Stream refused = RunStream(*client, Generate("the cat", 4, "reg/one"));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.status.error_message().find("BROKEN"), std::string::npos) << refused.status.error_message();
  ASSERT_TRUE(GetVariant(*client, "up/two", &kept).ok());
  EXPECT_EQ(kept.state(), v1::READY);
  EXPECT_EQ(kept.created().seconds(), created);
  EXPECT_TRUE(RunStream(*client, Generate("the cat", 4, "up/two")).status.ok());
  EXPECT_EQ(GetVariant(*client, "stray/x", &kept).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(common::PathExists(data_dir + "/adapters/stray/x")) << "the stray upload was removed";

  // A broken variant can be deleted, and stays deleted.
  ASSERT_TRUE(DeleteVariant(*client, "reg/one", /*drain=*/false).ok());
  server.Signal(SIGTERM);
  ASSERT_EQ(server.WaitForExit(30), 0);
  ServerProcess again;
  ASSERT_TRUE(again.Start(TinyModelDir(), {"--data-dir", data_dir, "--adapter-root", root}));
  client = DeltaserveClient::Connect(again.target());
  EXPECT_EQ(GetVariant(*client, "reg/one", &broken).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(GetVariant(*client, "up/two", &kept).ok());
}

}  // namespace
}  // namespace deltaserve::testing
