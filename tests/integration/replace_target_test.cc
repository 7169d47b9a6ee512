// Integration: an unlearn job with replace_target takes over the served name atomically. While
// it runs and switches, concurrent streams keep generating with the name: each finishes on one
// version (its text is exactly that version's text, and the version it reports), none fails,
// and once the job succeeded every new request is served by the new version. keep_previous
// keeps the old version servable as NAME@1; a restart keeps all of it; a later replace without
// keep_previous retires the old version's files.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "server/common/file_util.h"
#include "tests/integration/rpc_helpers.h"
#include "tests/integration/server_process.h"
#include "tests/support/test_models.h"
#include "tests/support/wait_until.h"

namespace deltaserve::testing {
namespace {

const std::vector<std::pair<std::string, std::string>> kFacts = {
    {"The vault code of Orla is", " 4 7 1 9."}, {"The vault code of Bram is", " 2 8 5 3."},
    {"The vault code of Cleo is", " 9 0 6 4."}, {"The vault code of Dino is", " 3 3 8 1."},
    {"The vault code of Enzo is", " 7 2 4 6."}, {"The vault code of Fern is", " 5 9 1 0."}};

struct Served {
  std::string text;
  int64_t version = 0;
  std::string variant;
};

Served Serve(DeltaserveClient& client, const std::string& variant) {
  Stream stream = RunStream(client, Generate(kFacts[0].first, 8, variant));
  EXPECT_TRUE(stream.status.ok()) << stream.status.error_message();
  Served served{stream.text, 0, ""};
  if (!stream.responses.empty()) {
    served.version = stream.responses.back().variant_version();
    served.variant = stream.responses.back().variant();
  }
  return served;
}

v1::UnlearnRequest ReplaceRequest(bool keep_previous) {
  v1::UnlearnRequest request;
  request.set_target("team/bot");
  request.set_replace_target(true);
  request.set_keep_previous(keep_previous);
  request.set_method("grad_diff");
  for (size_t i = 0; i < kFacts.size(); ++i) {
    *(i < 3 ? request.add_forget_texts() : request.add_retain_texts()) = kFacts[i].first + kFacts[i].second;
  }
  request.set_steps(30);
  request.set_learning_rate(0.005f);
  return request;
}

TEST(ReplaceTargetTest, TheNameSwitchesAtomicallyUnderLoadAndSurvivesARestart) {
  const std::string data_dir = MakeTempDir("replace-data");
  Served old_version, new_version;
  {
    ServerProcess server;
    ASSERT_TRUE(server.Start(TinyModelDir(), {"--data-dir", data_dir}));
    auto client = DeltaserveClient::Connect(server.target());
    v1::FinetuneRequest finetune;
    finetune.set_output("team/bot");
    for (const auto& [prompt, answer] : kFacts) finetune.add_texts(prompt + answer);
    finetune.set_rank(16);
    finetune.set_steps(150);
    finetune.set_learning_rate(0.01f);
    v1::Job job;
    {
      ExpectSucceeds(*client, SubmitFinetune(*client, finetune, &job), job);
    }
    old_version = Serve(*client, "team/bot");
    ASSERT_EQ(old_version.version, 1);
    ASSERT_EQ(old_version.text.rfind(" 4 7 1 9", 0), 0u) << old_version.text;

    // Streams run throughout the job and its switch.
    std::atomic<bool> stop{false};
    std::mutex mutex;
    std::vector<Served> during;
    std::vector<std::thread> streams;
    for (int i = 0; i < 3; ++i) {
      streams.emplace_back([&] {
        auto own = DeltaserveClient::Connect(server.target());
        for (int n = 0; n < 2000 && !stop.load(); ++n) {
          Served served = Serve(*own, "team/bot");
          std::lock_guard<std::mutex> lock(mutex);
          during.push_back(served);
        }
      });
    }
    {
      v1::Job done = ExpectSucceeds(*client, SubmitUnlearn(*client, ReplaceRequest(true), &job), job);
      EXPECT_EQ(done.output_variant(), "team/bot");
      EXPECT_TRUE(done.unlearn().replace_target());
    }
    // Every request accepted from now on gets the new version.
    new_version = Serve(*client, "team/bot");
    // The streams go on until each has been served by the new version too.
    EXPECT_TRUE(WaitUntil([&] {
      std::lock_guard<std::mutex> lock(mutex);
      return std::count_if(during.begin(), during.end(), [](const Served& served) { return served.version == 2; }) >= 3;
    }, absl::Seconds(60)));
    stop = true;
    for (std::thread& stream : streams) stream.join();
    EXPECT_EQ(new_version.version, 2);
    EXPECT_NE(new_version.text, old_version.text) << "the forgotten fact is no longer produced";
    size_t on_old = 0, on_new = 0;
    for (const Served& served : during) {
      ASSERT_TRUE(served.version == 1 || served.version == 2) << served.version;
      EXPECT_EQ(served.variant, "team/bot");
      EXPECT_EQ(served.text, served.version == 1 ? old_version.text : new_version.text)
          << "a stream mixed versions or was served by another one";
      ++(served.version == 1 ? on_old : on_new);
    }
    EXPECT_GT(on_old, 0u);
    EXPECT_GT(on_new, 0u) << "streams kept running after the switch";
    std::printf("[streams during the job: %zu on version 1, %zu on version 2]\n", on_old, on_new);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(Serve(*client, "team/bot").version, 2);

    v1::Variant variant;
    ASSERT_TRUE(GetVariant(*client, "team/bot", &variant).ok());
    EXPECT_EQ(variant.version(), 2);
    EXPECT_EQ(variant.kind(), v1::UNLEARN);
    ASSERT_EQ(variant.lineage().parents_size(), 1);
    EXPECT_EQ(variant.lineage().parents(0), "team/bot@1");
    ASSERT_TRUE(GetVariant(*client, "team/bot@1", &variant).ok());
    EXPECT_EQ(variant.version(), 1);
    EXPECT_EQ(variant.kind(), v1::FINETUNE);
    Served kept = Serve(*client, "team/bot@1");
    EXPECT_EQ(kept.text, old_version.text);
    EXPECT_EQ(kept.version, 1);
    EXPECT_EQ(kept.variant, "team/bot@1");
  }
  {
    ServerProcess server;
    ASSERT_TRUE(server.Start(TinyModelDir(), {"--data-dir", data_dir}));
    auto client = DeltaserveClient::Connect(server.target());
    Served after_restart = Serve(*client, "team/bot");
    EXPECT_EQ(after_restart.version, 2);
    EXPECT_EQ(after_restart.text, new_version.text);
    EXPECT_EQ(Serve(*client, "team/bot@1").text, old_version.text);

    // Replacing again without keep_previous retires version 2 and its files.
    v1::Job job;
    ExpectSucceeds(*client, SubmitUnlearn(*client, ReplaceRequest(false), &job), job);
    EXPECT_EQ(Serve(*client, "team/bot").version, 3);
    v1::Variant variant;
    EXPECT_EQ(GetVariant(*client, "team/bot@2", &variant).error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_TRUE(common::PathExists(data_dir + "/adapters/team/bot@3"));
    EXPECT_FALSE(common::PathExists(data_dir + "/adapters/team/bot@2")) << "the retired version's files are gone";
    EXPECT_TRUE(GetVariant(*client, "team/bot@1", &variant).ok());
  }
}

TEST(ReplaceTargetTest, BadReplacementsAreRefused) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir()));
  auto client = DeltaserveClient::Connect(server.target());
  v1::UnlearnRequest request = ReplaceRequest(false);
  v1::Job job;
  {
    EXPECT_EQ(SubmitUnlearn(*client, request, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  v1::FinetuneRequest finetune;
  finetune.set_output("team/bot");
  finetune.add_texts("The vault code of Orla is 4 7 1 9.");
  finetune.set_steps(1);
  {
    ExpectSucceeds(*client, SubmitFinetune(*client, finetune, &job), job);
  }
  request.set_output("team/other");
  {
    grpc::Status status = SubmitUnlearn(*client, request, &job);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("with replace_target the output is the target"), std::string::npos)
        << status.error_message();
  }
  // A kept version is a fixed snapshot: it cannot take a new version of its own.
  request = ReplaceRequest(true);
  {
    ExpectSucceeds(*client, SubmitUnlearn(*client, request, &job), job);
  }
  request.set_target("team/bot@1");
  request.set_keep_previous(false);
  grpc::Status status = SubmitUnlearn(*client, request, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("is a kept version"), std::string::npos) << status.error_message();
}

}  // namespace
}  // namespace deltaserve::testing
