// Parallel sampling (n > 1) on the engine: choice i equals a single request seeded seed + i,
// whatever else is batched; the prompt is computed once (the forward passes' tokens add up to
// one prompt plus each choice's decodes); outputs carry their choice index and each choice's end;
// cancelling the request ends every choice; and every block is returned.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <set>

#include "tests/unit/engine/engine_test_fixture.h"

namespace deltaserve::engine {
namespace {

// Keeps each choice's tokens, logprobs and end apart.
class ChoicesSink : public RequestSink {
 public:
  void OnOutput(GenerationOutput output) override {
    absl::MutexLock lock(&mutex_);
    Choice& choice = choices_[output.index];
    choice.tokens.insert(choice.tokens.end(), output.token_ids.begin(), output.token_ids.end());
    choice.logprobs.insert(choice.logprobs.end(), output.logprobs.begin(), output.logprobs.end());
    if (output.choice_finished.has_value()) {
      EXPECT_FALSE(choice.finished.has_value()) << "choice " << output.index << " ended twice";
      choice.finished = output.choice_finished;
    }
  }
  void OnFinished(RequestResult result) override {
    {
      absl::MutexLock lock(&mutex_);
      EXPECT_FALSE(finished_) << "OnFinished twice";
      finished_ = true;
      result_ = std::move(result);
    }
    done_.Notify();
  }
  const RequestResult& Wait() {
    EXPECT_TRUE(done_.WaitForNotificationWithTimeout(absl::Seconds(60)));
    return result_;
  }
  struct Choice {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::optional<FinishReason> finished;
  };
  std::map<int32_t, Choice> choices_;

 private:
  absl::Mutex mutex_;
  bool finished_ = false;
  RequestResult result_;
  absl::Notification done_;
};

// Counts the tokens of every forward pass.
class StepTokens : public EngineObserver {
 public:
  void OnStep(const StepStats& stats) override { total += stats.batch_tokens; }
  std::atomic<int64_t> total{0};
};

class ParallelSamplingTest : public EngineTest {};

TEST_F(ParallelSamplingTest, ChoiceIEqualsASingleRequestSeededSeedPlusIAndThePromptRunsOnce) {
  StepTokens steps;
  EngineOptions options;
  options.kv_block_tokens = 4;  // the prompt ends inside a block: the choices copy it
  auto engine = Engine::Create(options, model_, tokenizer_, &steps);
  ASSERT_TRUE(engine.ok());
  EngineRequest request = Request("the old river follows the mountain path", 12, 100);
  request.sampling.logprobs = true;
  request.sampling.n = 4;
  auto sink = std::make_shared<ChoicesSink>();
  ASSERT_TRUE((*engine)->Submit(request, sink).ok());
  const RequestResult& result = sink->Wait();
  EXPECT_EQ(result.reason, FinishReason::kLength);
  const int64_t prompt = static_cast<int64_t>(request.prompt_token_ids.size());
  ASSERT_NE(prompt % 4, 0);
  EXPECT_EQ(result.usage.prompt_tokens, prompt);
  EXPECT_EQ(result.usage.completion_tokens, 4 * 12);
  // One prompt, then 11 decodes per choice (the first token of every choice comes from the
  // prompt's logits). The last step is counted once the engine published its snapshot.
  ASSERT_TRUE(SnapshotSettles(**engine, [](const EngineSnapshot& s) { return s.active_requests == 0; }));
  EXPECT_EQ(steps.total.load(), prompt + 4 * 11);
  ASSERT_EQ(sink->choices_.size(), 4u);

  // Independent: four single requests, seeds 100..103, on another engine, batched with others.
  auto reference = MakeEngine();
  std::vector<std::shared_ptr<RecordingSink>> singles;
  std::vector<std::shared_ptr<RecordingSink>> noise;
  for (int i = 0; i < 4; ++i) {
    EngineRequest single = Request("the old river follows the mountain path", 12, 100 + i);
    single.sampling.logprobs = true;
    singles.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(reference->Submit(single, singles.back()).ok());
    noise.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(reference->Submit(Request("seven apples " + std::to_string(i), 9, 7 + i), noise.back()).ok());
  }
  std::set<std::vector<int32_t>> distinct;
  for (int i = 0; i < 4; ++i) {
    singles[i]->Wait();
    const ChoicesSink::Choice& choice = sink->choices_[i];
    EXPECT_EQ(choice.tokens, singles[i]->tokens) << "choice " << i;
    ASSERT_EQ(choice.logprobs.size(), singles[i]->logprobs.size());
    for (size_t t = 0; t < choice.logprobs.size(); ++t) EXPECT_NEAR(choice.logprobs[t], singles[i]->logprobs[t], 1e-4);
    EXPECT_EQ(choice.finished, FinishReason::kLength);
    distinct.insert(choice.tokens);
  }
  EXPECT_EQ(distinct.size(), 4u) << "the choices did not sample independently";
  for (auto& other : noise) other->Wait();
  EXPECT_TRUE(SnapshotSettles(**engine, [](const EngineSnapshot& s) { return s.active_requests == 0 && s.kv_used_blocks == 0; }));
}

TEST_F(ParallelSamplingTest, TheSameRequestGivesTheSameChoicesWhateverIsBatchedWithIt) {
  EngineRequest request = Request("a distant star", 10, 5);
  request.sampling.n = 3;
  auto alone_engine = MakeEngine();
  auto alone = std::make_shared<ChoicesSink>();
  ASSERT_TRUE(alone_engine->Submit(request, alone).ok());
  alone->Wait();
  EngineOptions options;
  options.max_batch_tokens = 6;
  options.kv_block_tokens = 4;
  options.kv_cache_bytes = 16 * 4 * model_->KvCacheBytesPerToken();  // tight: preemptions
  auto busy_engine = MakeEngine(options);
  std::vector<std::shared_ptr<RecordingSink>> others;
  for (int i = 0; i < 3; ++i) {
    others.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(busy_engine->Submit(Request("our team builds " + std::to_string(i), 14, 30 + i), others.back()).ok());
  }
  auto busy = std::make_shared<ChoicesSink>();
  ASSERT_TRUE(busy_engine->Submit(request, busy).ok());
  busy->Wait();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(busy->choices_[i].tokens, alone->choices_[i].tokens) << "choice " << i;
  for (auto& other : others) other->Wait();
  EXPECT_TRUE(SnapshotSettles(*busy_engine, [](const EngineSnapshot& s) { return s.active_requests == 0 && s.kv_used_blocks == 0; }));
}

TEST_F(ParallelSamplingTest, CancellingTheRequestEndsEveryChoiceAndFreesTheirBlocks) {
  auto engine = MakeEngine();
  EngineRequest request = Request("the cat reads", 400, 9);
  request.sampling.n = 3;
  auto sink = std::make_shared<ChoicesSink>();
  auto id = engine->Submit(request, sink);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(SnapshotSettles(*engine, [](const EngineSnapshot& s) { return s.running_requests == 3; }));
  engine->Cancel(*id);
  EXPECT_EQ(sink->Wait().reason, FinishReason::kCancelled);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(sink->choices_[i].finished, FinishReason::kCancelled) << i;
  EXPECT_TRUE(SnapshotSettles(*engine, [](const EngineSnapshot& s) { return s.active_requests == 0 && s.kv_used_blocks == 0; }));
}

TEST_F(ParallelSamplingTest, BadNIsRefused) {
  auto engine = MakeEngine();
  for (int n : {0, -1, 17}) {
    EngineRequest request = Request("a", 4);
    request.sampling.n = n;
    auto status = engine->Submit(request, std::make_shared<ChoicesSink>());
    EXPECT_EQ(status.status().code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_NE(status.status().message().find("n "), std::string::npos);
  }
}

}  // namespace
}  // namespace deltaserve::engine
