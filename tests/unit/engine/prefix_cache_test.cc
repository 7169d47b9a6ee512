// The engine's prefix cache against the same requests computed from scratch (an engine with the
// cache off): equal tokens and logprobs for the base and adapters, greedy and seeded, in mixed
// batches, with prompts diverging mid-block; no sharing between variants; a removed adapter
// leaves no blocks and a new adapter never sees old KV; under pressure, preemption and
// cancellation every block is accounted for, and a flush empties the cache.
#include <gtest/gtest.h>

#include "server/deltas/peft_adapter.h"
#include "tests/unit/engine/engine_test_fixture.h"
#include "tools/demo_model.h"

namespace deltaserve::engine {
namespace {

// A system prompt shared by the requests below: several blocks of 4 tokens.
const std::string kSystem =
    "you are a helpful assistant who answers in short plain sentences about rivers, mountains and cats.";

class PrefixCacheTest : public EngineTest {
 protected:
  static void SetUpTestSuite() {
    EngineTest::SetUpTestSuite();
    std::string directory = testing::MakeTempDir("prefix-adapters");
    ASSERT_TRUE(tools::WriteDemoAdapters(testing::TinyModelDir(), directory, 2, 4).ok());
    for (const char* name : {"demo-000", "demo-001"}) {
      auto adapter = deltas::ReadPeftAdapter(directory + "/" + name, model_->config(), at::kFloat, at::kCPU);
      ASSERT_TRUE(adapter.ok()) << adapter.status();
      adapters_.push_back(std::make_shared<const deltas::DeltaSet>(std::move(adapter->deltas)));
    }
  }
  static EngineOptions Options(bool cache) {
    EngineOptions options;
    options.kv_block_tokens = 4;
    options.prefix_caching = cache;
    options.max_batch_tokens = 24;  // chunked prefill mixed with decodes
    return options;
  }
  static EngineRequest WithLogprobs(EngineRequest request, uint64_t adapter = 0) {
    request.sampling.logprobs = true;
    request.adapter_id = adapter;
    return request;
  }
  // Checks `sink` against `reference`: the same tokens, logprobs within float rounding.
  static void ExpectSame(const RecordingSink& sink, const RecordingSink& reference, const std::string& what) {
    EXPECT_EQ(sink.tokens, reference.tokens) << what;
    ASSERT_EQ(sink.logprobs.size(), reference.logprobs.size()) << what;
    for (size_t i = 0; i < sink.logprobs.size(); ++i) {
      EXPECT_NEAR(sink.logprobs[i], reference.logprobs[i], 1e-4) << what << " token " << i;
    }
  }
  static inline std::vector<std::shared_ptr<const deltas::DeltaSet>> adapters_;
};

TEST_F(PrefixCacheTest, CachedPrefixesGiveTheOutputsOfComputingThemAgain) {
  auto off = MakeEngine(Options(false));
  auto on = MakeEngine(Options(true));
  const uint64_t off_adapter = *off->adapters().Add("", adapters_[0]);
  const uint64_t on_adapter = *on->adapters().Add("", adapters_[0]);
  // Suffixes diverge inside a block (the shared text does not end on a block boundary).
  auto requests = [&](uint64_t adapter) {
    return std::vector<EngineRequest>{
        WithLogprobs(Request(kSystem + " the cat reads", 10)),
        WithLogprobs(Request(kSystem + " the cat sleeps", 12, 5)),
        WithLogprobs(Request(kSystem + " the cat reads", 9), adapter),
        WithLogprobs(Request(kSystem + " where is the river", 11, 6), adapter),
        WithLogprobs(Request("the old river follows the mountain path", 8)),
    };
  };
  std::vector<std::shared_ptr<RecordingSink>> reference;
  for (EngineRequest& request : requests(off_adapter)) reference.push_back(RunRequest(*off, std::move(request)));
  for (const auto& sink : reference) EXPECT_EQ(sink->Wait().usage.cached_prompt_tokens, 0);

  // Warm the cache under both variants, then run everything at once.
  auto warm_base = RunRequest(*on, WithLogprobs(Request(kSystem + " hello", 2)));
  auto warm_adapter = RunRequest(*on, WithLogprobs(Request(kSystem + " hello", 2), on_adapter));
  EXPECT_EQ(warm_base->Wait().usage.cached_prompt_tokens, 0);
  EXPECT_EQ(warm_adapter->Wait().usage.cached_prompt_tokens, 0) << "an adapter reused the base's KV";
  const int64_t system_tokens = static_cast<int64_t>(tokenizer_->EncodePrompt(kSystem)->size());
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (EngineRequest& request : requests(on_adapter)) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(on->Submit(std::move(request), sinks.back()).ok());
  }
  for (size_t i = 0; i < sinks.size(); ++i) {
    const RequestResult& result = sinks[i]->Wait();
    ExpectSame(*sinks[i], *reference[i], "request " + std::to_string(i));
    if (i < 4) {
      // At least every full block of the system prompt came from the cache.
      EXPECT_GE(result.usage.cached_prompt_tokens, system_tokens / 4 * 4) << "request " << i;
      EXPECT_LT(result.usage.cached_prompt_tokens, result.usage.prompt_tokens);
    } else {
      EXPECT_EQ(result.usage.cached_prompt_tokens, 0);
    }
  }
  // The same request again hits every full block but the one holding its last token.
  auto again = RunRequest(*on, WithLogprobs(Request(kSystem + " the cat reads", 10)));
  const int64_t prompt = again->Wait().usage.prompt_tokens;
  EXPECT_EQ(again->Wait().usage.cached_prompt_tokens, (prompt - 1) / 4 * 4);
  ExpectSame(*again, *reference[0], "repeated request");
  EXPECT_TRUE(SnapshotSettles(*on, [](const EngineSnapshot& s) { return s.active_requests == 0 && s.kv_used_blocks == 0; }));
}

TEST_F(PrefixCacheTest, TwoVariantsNeverShareBlocks) {
  auto on = MakeEngine(Options(true));
  auto off = MakeEngine(Options(false));
  const uint64_t adapter = *on->adapters().Add("", adapters_[0]);
  const uint64_t off_adapter = *off->adapters().Add("", adapters_[0]);
  const std::string prompt = kSystem + " tell me";
  auto base = RunRequest(*on, WithLogprobs(Request(prompt, 6)));
  ASSERT_TRUE(SnapshotSettles(*on, [](const EngineSnapshot& s) { return s.active_requests == 0; }));
  const int64_t base_blocks = on->Snapshot().kv_cached_blocks;
  EXPECT_EQ(base_blocks, base->Wait().usage.prompt_tokens / 4);
  auto variant = RunRequest(*on, WithLogprobs(Request(prompt, 6), adapter));
  EXPECT_EQ(variant->Wait().usage.cached_prompt_tokens, 0);
  ASSERT_TRUE(SnapshotSettles(*on, [](const EngineSnapshot& s) { return s.active_requests == 0; }));
  EXPECT_EQ(on->Snapshot().kv_cached_blocks, 2 * base_blocks) << "the variant's blocks are its own";
  ExpectSame(*variant, *RunRequest(*off, WithLogprobs(Request(prompt, 6), off_adapter)), "adapter");
  EXPECT_NE(variant->tokens, base->tokens);
}

TEST_F(PrefixCacheTest, ARemovedAdapterLeavesNoBlocksAndItsSuccessorNeverSeesThem) {
  auto on = MakeEngine(Options(true));
  auto off = MakeEngine(Options(false));
  const std::string prompt = kSystem + " tell me";
  const uint64_t old_id = *on->adapters().Add("", adapters_[0]);
  auto old_output = RunRequest(*on, WithLogprobs(Request(prompt, 6), old_id));
  ASSERT_TRUE(SnapshotSettles(*on, [](const EngineSnapshot& s) { return s.active_requests == 0; }));
  EXPECT_GT(on->Snapshot().kv_cached_blocks, 0);
  ASSERT_TRUE(on->adapters().Remove(old_id).ok());
  // The same slot of the catalogue now holds other weights (a new id, as a re-registration gets).
  const uint64_t new_id = *on->adapters().Add("", adapters_[1]);
  auto new_output = RunRequest(*on, WithLogprobs(Request(prompt, 6), new_id));
  EXPECT_EQ(new_output->Wait().usage.cached_prompt_tokens, 0);
  const uint64_t reference_id = *off->adapters().Add("", adapters_[1]);
  ExpectSame(*new_output, *RunRequest(*off, WithLogprobs(Request(prompt, 6), reference_id)), "new weights");
  EXPECT_NE(new_output->tokens, old_output->tokens);
  // Only the new adapter's blocks remain cached.
  ASSERT_TRUE(SnapshotSettles(*on, [](const EngineSnapshot& s) { return s.active_requests == 0; }));
  EXPECT_EQ(on->Snapshot().kv_cached_blocks, new_output->Wait().usage.prompt_tokens / 4);
}

TEST_F(PrefixCacheTest, PressurePreemptionAndCancellationAccountForEveryBlock) {
  auto off = MakeEngine(Options(false));
  EngineOptions tight_options = Options(true);
  tight_options.kv_cache_bytes = 40 * 4 * model_->KvCacheBytesPerToken();  // 40 blocks: too few for all
  auto tight = MakeEngine(tight_options);
  std::vector<EngineRequest> requests;
  for (int i = 0; i < 6; ++i) {
    const std::string prompt = kSystem + " question " + std::to_string(i);
    requests.push_back(WithLogprobs(i % 2 ? Request(prompt, 24, 40 + i) : Request(prompt, 24)));
  }
  std::vector<std::shared_ptr<RecordingSink>> reference;
  for (const EngineRequest& request : requests) reference.push_back(RunRequest(*off, request));
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (const EngineRequest& request : requests) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(tight->Submit(request, sinks.back()).ok());
  }
  int64_t hits = 0;
  for (size_t i = 0; i < sinks.size(); ++i) {
    hits += sinks[i]->Wait().usage.cached_prompt_tokens;
    ExpectSame(*sinks[i], *reference[i], "request " + std::to_string(i));
  }
  EXPECT_GT(tight->Snapshot().preemptions, 0);
  EXPECT_GT(hits, 0);
  ASSERT_TRUE(SnapshotSettles(*tight, [](const EngineSnapshot& s) {
    return s.active_requests == 0 && s.kv_used_blocks == 0 && s.kv_cached_blocks > 0;
  }));

  // Cancel one of two requests that share the cached prefix: the other is unaffected.
  auto cancelled = std::make_shared<RecordingSink>();
  auto kept = std::make_shared<RecordingSink>();
  auto cancelled_id = tight->Submit(WithLogprobs(Request(kSystem + " question 0", 200)), cancelled);
  ASSERT_TRUE(cancelled_id.ok());
  ASSERT_TRUE(tight->Submit(requests[2], kept).ok());
  ASSERT_TRUE(cancelled->WaitForFirstOutput());
  tight->Cancel(*cancelled_id);
  EXPECT_EQ(cancelled->Wait().reason, FinishReason::kCancelled);
  kept->Wait();
  ExpectSame(*kept, *reference[2], "the request that shared blocks with a cancelled one");
  ASSERT_TRUE(SnapshotSettles(*tight, [](const EngineSnapshot& s) {
    return s.active_requests == 0 && s.kv_used_blocks == 0 && s.kv_cached_blocks > 0;
  }));
  tight->FlushPrefixCache();
  ASSERT_TRUE(SnapshotSettles(*tight, [](const EngineSnapshot& s) { return s.kv_cached_blocks == 0; }));
  // Every block is free again: a request needing nearly the whole cache still runs.
  auto big = RunRequest(*tight, Request(kSystem, 40 * 4 - 40));
  EXPECT_EQ(big->Wait().reason, FinishReason::kLength);
}

TEST_F(PrefixCacheTest, ScoresAreComputedNotReadFromTheCache) {
  auto on = MakeEngine(Options(true));
  auto off = MakeEngine(Options(false));
  RunRequest(*on, Request(kSystem + " warm", 1));
  EngineRequest score = Request(kSystem + " the cat reads", 0);
  score.kind = RequestKind::kScore;
  auto cached_sink = RunRequest(*on, score);
  auto fresh_sink = RunRequest(*off, score);
  const RequestResult& cached = cached_sink->Wait();
  const RequestResult& fresh = fresh_sink->Wait();
  EXPECT_EQ(cached.usage.cached_prompt_tokens, 0);
  ASSERT_EQ(cached.token_logprobs.size(), fresh.token_logprobs.size());
  for (size_t i = 0; i < fresh.token_logprobs.size(); ++i) {
    EXPECT_NEAR(cached.token_logprobs[i], fresh.token_logprobs[i], 1e-4);
  }
}

}  // namespace
}  // namespace deltaserve::engine
