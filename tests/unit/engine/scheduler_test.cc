// Scheduler: token budget, chunked prefill, running limit, block accounting and preemption of
// the youngest request.
#include <gtest/gtest.h>

#include "server/engine/scheduler.h"

namespace deltaserve::engine {
namespace {

std::unique_ptr<RequestState> Request(int64_t prompt_tokens) {
  auto request = std::make_unique<RequestState>();
  request->tokens.assign(prompt_tokens, 5);
  request->prompt_tokens = prompt_tokens;
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
  EXPECT_EQ(a->kv_blocks, 2);
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
  EXPECT_EQ(young->kv_blocks, 0);
  EXPECT_EQ(scheduler.waiting().front(), young.get());
  EXPECT_EQ(allocator.used_blocks(), 2);
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

}  // namespace
}  // namespace deltaserve::engine
