// EngineTest: a test fixture with the tiny demo model and its tokenizer loaded once per suite,
// engines made from options, requests made from text, and RecordingSink, which keeps a request's
// tokens, logprobs, text and result. Shared by the engine's test files.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "server/engine/engine.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer_loader.h"
#include "tests/support/test_models.h"

namespace deltaserve::engine {

class RecordingSink : public RequestSink {
 public:
  void OnOutput(GenerationOutput output) override {
    absl::MutexLock lock(&mutex_);
    Append(output);
    ++outputs_;
  }
  void OnFinished(RequestResult result) override {
    {
      absl::MutexLock lock(&mutex_);
      Append(result.final_output);
      result_ = std::move(result);
    }
    done_.Notify();
  }
  const RequestResult& Wait() {
    EXPECT_TRUE(done_.WaitForNotificationWithTimeout(absl::Seconds(60)));
    return result_;
  }
  bool WaitForFirstOutput() {
    absl::MutexLock lock(&mutex_);
    return mutex_.AwaitWithTimeout(
        absl::Condition(+[](int* outputs) { return *outputs > 0; }, &outputs_), absl::Seconds(30));
  }
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::string text;

 private:
  void Append(const GenerationOutput& output) {
    tokens.insert(tokens.end(), output.token_ids.begin(), output.token_ids.end());
    logprobs.insert(logprobs.end(), output.logprobs.begin(), output.logprobs.end());
    text += output.text;
  }
  absl::Mutex mutex_;
  int outputs_ = 0;
  RequestResult result_;
  absl::Notification done_;
};

class EngineTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    auto model = model::LlamaModel::Load(testing::TinyModelDir(), {});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::shared_ptr<const model::LlamaModel>(std::move(*model));
    auto tokenizer = model::LoadTokenizer(testing::TinyModelDir(), model_->config());
    ASSERT_TRUE(tokenizer.ok());
    tokenizer_ = std::shared_ptr<const model::Tokenizer>(std::move(*tokenizer));
  }

  std::unique_ptr<Engine> MakeEngine(EngineOptions options = {}) {
    auto engine = Engine::Create(options, model_, tokenizer_);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return std::move(*engine);
  }

  static EngineRequest Request(const std::string& prompt, int max_tokens,
                               std::optional<uint64_t> seed = std::nullopt) {
    EngineRequest request;
    request.prompt_token_ids = *tokenizer_->EncodePrompt(prompt);
    request.sampling.max_tokens = max_tokens;
    request.sampling.ignore_eos = true;
    if (seed.has_value()) {
      request.sampling.seed = seed;
      request.sampling.temperature = 0.9f;
      request.sampling.top_p = 0.95f;
    }
    return request;
  }

  static std::shared_ptr<RecordingSink> RunRequest(Engine& engine, EngineRequest request) {
    auto sink = std::make_shared<RecordingSink>();
    auto id = engine.Submit(std::move(request), sink);
    EXPECT_TRUE(id.ok()) << id.status();
    sink->Wait();
    return sink;
  }

  static inline std::shared_ptr<const model::LlamaModel> model_;
  static inline std::shared_ptr<const model::Tokenizer> tokenizer_;
};


// The engine publishes its snapshot after each iteration, just after the sinks heard from it.
inline bool SnapshotSettles(const Engine& engine, const std::function<bool(const EngineSnapshot&)>& predicate) {
  return engine.AwaitSnapshot(predicate, engine.clock().Now() + absl::Seconds(20));
}

}  // namespace deltaserve::engine
