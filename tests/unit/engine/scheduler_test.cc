// Scheduler: token budget, chunked prefill, running limit, block accounting, preemption of the
// youngest request, and fairness between tenants (virtual token counters).
#include <algorithm>

#include <gtest/gtest.h>

#include "server/engine/scheduler.h"

namespace deltaserve::engine {
namespace {

std::unique_ptr<RequestState> Request(int64_t prompt_tokens, const std::string& tenant = "", double weight = 1.0) {
  auto request = std::make_unique<RequestState>();
  request->tokens.assign(prompt_tokens, 5);
  request->prompt_tokens = prompt_tokens;
  request->request.tenant = tenant;
  request->request.tenant_weight = weight;
  return request;
}

// Applies a schedule as the engine would: the slices' tokens are now computed; requests that
// reached their end sample one more token.
void Apply(const Schedule& schedule) {
  for (const ScheduledSlice& slice : schedule.slices) {
    slice.request->computed += slice.length;
    if (slice.request->computed == static_cast<int64_t>(slice.request->tokens.size())) {
      slice.request->tokens.push_back(7);
    }
  }
}

TEST(SchedulerTest, ChunksPrefillUnderTheTokenBudget) {
  KvBlockAllocator allocator(100, 4);
  Scheduler scheduler({/*max_batch_tokens=*/8, /*max_running_requests=*/4}, &allocator);
  auto a = Request(10), b = Request(3);
  scheduler.Enqueue(a.get());
  scheduler.Enqueue(b.get());
  Schedule first = scheduler.Next();
  ASSERT_EQ(first.slices.size(), 1u);
  EXPECT_EQ(first.slices[0].length, 8);
  EXPECT_EQ(a->kv_blocks.size(), 2u);
  Apply(first);
  Schedule second = scheduler.Next();  // a's last 2 prompt tokens, then b's whole prompt
  ASSERT_EQ(second.slices.size(), 2u);
  EXPECT_EQ(second.slices[0].request, a.get());
  EXPECT_EQ(second.slices[0].length, 2);
  EXPECT_EQ(second.slices[1].length, 3);
  Apply(second);
  Schedule third = scheduler.Next();  // both decode
  ASSERT_EQ(third.slices.size(), 2u);
  EXPECT_EQ(third.TotalTokens(), 2);
  EXPECT_EQ(allocator.used_blocks(), 3 + 1);  // a: 11 tokens, b: 4 tokens
}

TEST(SchedulerTest, APrefillCapLimitsPromptTokensOnlyInStepsThatDecode) {
  KvBlockAllocator allocator(2000, 4);
  Scheduler scheduler({/*max_batch_tokens=*/2048, /*max_running_requests=*/8}, &allocator);
  scheduler.set_prefill_cap(32);
  auto streaming = Request(3), long_prompt = Request(2001), late = Request(10);
  scheduler.Enqueue(long_prompt.get());
  Schedule alone = scheduler.Next();  // nothing decodes: the whole budget
  ASSERT_EQ(alone.slices.size(), 1u);
  EXPECT_EQ(alone.slices[0].length, 2001);
  EXPECT_EQ(alone.decode_tokens, 0);
  EXPECT_EQ(alone.prefill_tokens, 2001);
  Apply(alone);

  auto second = Request(2001);
  scheduler.Enqueue(streaming.get());
  scheduler.Enqueue(second.get());
  scheduler.Enqueue(late.get());
  Schedule mixed = scheduler.Next();  // long_prompt decodes: prompts share 32 tokens
  EXPECT_EQ(mixed.decode_tokens, 1);
  EXPECT_EQ(mixed.prefill_tokens, 32);
  EXPECT_EQ(mixed.TotalTokens(), 33);
  Apply(mixed);
  for (int step = 0; step < 100 && second->computed < 2001; ++step) {
    Schedule next = scheduler.Next();
    EXPECT_LE(next.prefill_tokens, 32);
    EXPECT_GE(next.decode_tokens, 1);
    Apply(next);
  }
  EXPECT_EQ(second->computed, 2001) << "the long prompt still progresses, 32 tokens a step";
}

TEST(SchedulerTest, RespectsTheRunningLimit) {
  KvBlockAllocator allocator(100, 4);
  Scheduler scheduler({64, 2}, &allocator);
  auto a = Request(2), b = Request(2), c = Request(2);
  for (auto* request : {a.get(), b.get(), c.get()}) scheduler.Enqueue(request);
  Schedule schedule = scheduler.Next();
  EXPECT_EQ(schedule.slices.size(), 2u);
  EXPECT_EQ(scheduler.waiting().size(), 1u);
  scheduler.Remove(a.get());
  Apply(schedule);
  EXPECT_EQ(scheduler.Next().slices.size(), 2u);  // b decodes, c is admitted
}

TEST(SchedulerTest, PreemptsTheYoungestWhenBlocksRunOut) {
  KvBlockAllocator allocator(3, 4);
  Scheduler scheduler({64, 8}, &allocator);
  auto old_request = Request(4), young = Request(4);
  scheduler.Enqueue(old_request.get());
  scheduler.Enqueue(young.get());
  Apply(scheduler.Next());  // each holds one full block and has sampled a 5th token
  EXPECT_EQ(allocator.used_blocks(), 2);
  Schedule schedule = scheduler.Next();  // old takes the 3rd block; young cannot grow
  EXPECT_EQ(scheduler.preemptions(), 1);
  ASSERT_EQ(schedule.slices.size(), 1u);
  EXPECT_EQ(schedule.slices[0].request, old_request.get());
  EXPECT_EQ(young->computed, 0);
  EXPECT_EQ(young->kv_blocks.size(), 0u);
  EXPECT_EQ(scheduler.waiting().front(), young.get());
  EXPECT_EQ(allocator.used_blocks(), 2);
}

// A request grows by exactly the blocks it needs, one block at a time (its KV never moves, so
// there is nothing to save by taking more), every block its own; all go back when it leaves.
TEST(SchedulerTest, GrowingRequestsTakeOneBlockAtATimeAndNeverShareOne) {
  KvBlockAllocator allocator(100, 4);
  Scheduler scheduler({64, 8}, &allocator);
  auto request = Request(16), other = Request(6);
  request->max_new_tokens = other->max_new_tokens = 40;
  scheduler.Enqueue(request.get());
  scheduler.Enqueue(other.get());
  std::vector<int64_t> holdings;
  for (int step = 0; step < 40; ++step) {  // up to the 56th token
    Apply(scheduler.Next());
    const int64_t held = static_cast<int64_t>(request->kv_blocks.size());
    if (holdings.empty() || holdings.back() != held) holdings.push_back(held);
  }
  EXPECT_EQ(holdings, (std::vector<int64_t>{4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}));
  std::vector<int32_t> all = request->kv_blocks;
  all.insert(all.end(), other->kv_blocks.begin(), other->kv_blocks.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end()) << "a block held twice";
  EXPECT_EQ(allocator.used_blocks(), static_cast<int64_t>(all.size()));
  scheduler.Remove(request.get());
  scheduler.Remove(other.get());
  EXPECT_TRUE(request->kv_blocks.empty());
  EXPECT_EQ(allocator.used_blocks(), 0);
}

TEST(SchedulerTest, AloneAndTooLargeIsReported) {
  KvBlockAllocator allocator(1, 4);
  Scheduler scheduler({64, 8}, &allocator);
  auto request = Request(4);
  scheduler.Enqueue(request.get());
  Apply(scheduler.Next());
  Schedule schedule = scheduler.Next();
  ASSERT_EQ(schedule.out_of_memory.size(), 1u);
  EXPECT_EQ(schedule.out_of_memory[0], request.get());
}

// Each tenant's counter grows by its scheduled tokens over its weight; a tenant becoming active
// starts at the smallest active counter, not at the zero of its idle past.
TEST(SchedulerTest, CountersGrowByTokensOverWeightAndNewcomersStartAtTheMinimum) {
  KvBlockAllocator allocator(1000, 4);
  Scheduler scheduler({/*max_batch_tokens=*/64, /*max_running_requests=*/8}, &allocator);
  auto a = Request(12, "a"), heavy = Request(12, "w2", 2.0);
  scheduler.Enqueue(a.get());
  scheduler.Enqueue(heavy.get());
  Apply(scheduler.Next());
  EXPECT_DOUBLE_EQ(scheduler.counter("a"), 12);
  EXPECT_DOUBLE_EQ(scheduler.counter("w2"), 6) << "weight 2: half the charge";
  Apply(scheduler.Next());  // one decode token each
  EXPECT_DOUBLE_EQ(scheduler.counter("a"), 13);
  EXPECT_DOUBLE_EQ(scheduler.counter("w2"), 6.5);
  auto late = Request(4, "late");
  scheduler.Enqueue(late.get());
  EXPECT_DOUBLE_EQ(scheduler.counter("late"), 6.5) << "lifted to the smallest active counter";
  scheduler.Remove(a.get());
  scheduler.Remove(heavy.get());
  scheduler.Remove(late.get());
  auto again = Request(4, "a");
  scheduler.Enqueue(again.get());
  EXPECT_DOUBLE_EQ(scheduler.counter("a"), 13) << "alone: nothing to lift to";
}

// One running slot; a tenant with ten requests queued ahead of another tenant's one: the other
// tenant's request runs next, not after the ten (FIFO would put it last).
TEST(SchedulerTest, AFloodingTenantCannotQueueAheadOfAnother) {
  KvBlockAllocator allocator(1000, 4);
  Scheduler scheduler({/*max_batch_tokens=*/64, /*max_running_requests=*/1}, &allocator);
  std::vector<std::unique_ptr<RequestState>> flood;
  for (int i = 0; i < 10; ++i) {
    flood.push_back(Request(8, "flood"));
    scheduler.Enqueue(flood.back().get());
  }
  auto light = Request(8, "light");
  std::vector<const RequestState*> order;
  for (int step = 0; step < 200 && order.size() < 11; ++step) {
    if (step == 1) scheduler.Enqueue(light.get());  // arrives while the flood's first runs
    Schedule schedule = scheduler.Next();
    Apply(schedule);
    for (const ScheduledSlice& slice : schedule.slices) {
      RequestState* request = slice.request;
      if (slice.start == 0) order.push_back(request);
      // Each request generates 4 tokens, then finishes.
      if (static_cast<int64_t>(request->tokens.size()) - request->prompt_tokens >= 4) scheduler.Remove(request);
    }
  }
  ASSERT_EQ(order.size(), 11u);
  EXPECT_EQ(order[0], flood[0].get());
  EXPECT_EQ(order[1], light.get()) << "the light tenant runs as soon as the slot frees";
  // Within a tenant the order stays FIFO.
  for (int i = 1; i < 10; ++i) EXPECT_EQ(order[i + 1], flood[i].get());
}

}  // namespace
}  // namespace deltaserve::engine

namespace deltaserve::engine {
namespace {

// A request whose prompt is `prefix` copies of token `prefix_token` then `rest` of `rest_token`,
// keyed for the prefix cache as the engine does.
std::unique_ptr<RequestState> Prompt(int prefix, int32_t prefix_token, int rest, int32_t rest_token,
                                     const KvBlockAllocator& allocator) {
  auto request = Request(prefix + rest);
  std::fill(request->tokens.begin(), request->tokens.begin() + prefix, prefix_token);
  std::fill(request->tokens.begin() + prefix, request->tokens.end(), rest_token);
  request->prefix_salt = 1;
  request->prefix_keys = PrefixKeys(1, request->tokens, allocator.block_tokens());
  return request;
}

// Applies a schedule and registers the computed full prompt blocks, as the engine does.
void ApplyAndRegister(const Schedule& schedule, KvBlockAllocator& allocator) {
  Apply(schedule);
  for (const ScheduledSlice& slice : schedule.slices) {
    RequestState* request = slice.request;
    const int64_t full = std::min(request->computed, request->prompt_tokens) / allocator.block_tokens();
    for (int64_t i = request->registered_blocks; i < full; ++i) {
      allocator.Register(request->kv_blocks[i], 1, request->prefix_keys[i],
                         request->tokens.data() + i * allocator.block_tokens());
    }
    request->registered_blocks = std::max(request->registered_blocks, full);
  }
}

TEST(SchedulerPrefixTest, ASharerWaitsForThePrefixBeingComputedThenStartsAfterIt) {
  KvBlockAllocator allocator(100, 4, /*prefix_caching=*/true);
  Scheduler scheduler({/*max_batch_tokens=*/64, /*max_running_requests=*/8}, &allocator);
  auto first = Prompt(16, 3, 2, 8, allocator), sharer = Prompt(16, 3, 3, 9, allocator);
  auto other = Prompt(16, 4, 2, 8, allocator);
  scheduler.Enqueue(first.get());
  scheduler.Enqueue(sharer.get());
  scheduler.Enqueue(other.get());
  Schedule step = scheduler.Next();  // the sharer waits; the unrelated prompt goes ahead
  ASSERT_EQ(step.slices.size(), 2u);
  EXPECT_EQ(step.slices[0].request, first.get());
  EXPECT_EQ(step.slices[1].request, other.get());
  ApplyAndRegister(step, allocator);
  step = scheduler.Next();
  ASSERT_EQ(step.slices.size(), 3u);
  EXPECT_EQ(step.slices[2].request, sharer.get());
  EXPECT_EQ(step.slices[2].start, 16);  // after the four shared blocks
  EXPECT_EQ(step.slices[2].length, 3);
  EXPECT_EQ(sharer->cached_tokens, 16);
  EXPECT_TRUE(std::equal(first->kv_blocks.begin(), first->kv_blocks.begin() + 4, sharer->kv_blocks.begin()));

  // Without grouping the sharer computes the prefix again alongside the first.
  KvBlockAllocator plain_allocator(100, 4, true);
  SchedulerOptions plain_options{64, 8};
  plain_options.prefix_grouping = false;
  Scheduler plain(plain_options, &plain_allocator);
  auto a = Prompt(16, 3, 2, 8, plain_allocator), b = Prompt(16, 3, 3, 9, plain_allocator);
  plain.Enqueue(a.get());
  plain.Enqueue(b.get());
  EXPECT_EQ(plain.Next().TotalTokens(), 18 + 19);
}

TEST(SchedulerPrefixTest, SharersOfACachedPrefixGoFirstWithinATenantButTheOldestIsNotStarved) {
  KvBlockAllocator allocator(100, 4, true);
  SchedulerOptions options{/*max_batch_tokens=*/64, /*max_running_requests=*/1};
  options.max_passed_over = 2;
  Scheduler scheduler(options, &allocator);
  // Cache a 16-token prefix.
  auto warm = Prompt(16, 3, 1, 8, allocator);
  scheduler.Enqueue(warm.get());
  ApplyAndRegister(scheduler.Next(), allocator);
  scheduler.Remove(warm.get());
  EXPECT_EQ(allocator.cached_blocks(), 4);

  auto unrelated = Prompt(16, 4, 1, 8, allocator);
  std::vector<std::unique_ptr<RequestState>> sharers;
  for (int i = 0; i < 4; ++i) sharers.push_back(Prompt(16, 3, 2, 10 + i, allocator));
  scheduler.Enqueue(unrelated.get());
  for (auto& sharer : sharers) scheduler.Enqueue(sharer.get());
  std::vector<RequestState*> order;
  for (int admitted = 0; admitted < 5; ++admitted) {
    Schedule step = scheduler.Next();
    ASSERT_EQ(step.slices.size(), 1u);
    order.push_back(step.slices[0].request);
    scheduler.Remove(step.slices[0].request);
  }
  // Two sharers overtake the oldest; then it goes (passed over twice), then the other sharers.
  EXPECT_EQ(order[0], sharers[0].get());
  EXPECT_EQ(order[1], sharers[1].get());
  EXPECT_EQ(order[2], unrelated.get());
  EXPECT_EQ(order[3], sharers[2].get());
  EXPECT_EQ(sharers[0]->cached_tokens, 16);
  EXPECT_EQ(unrelated->cached_tokens, 0);
}

}  // namespace
}  // namespace deltaserve::engine
