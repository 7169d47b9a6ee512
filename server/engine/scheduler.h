// Scheduler: iteration-level continuous batching. Each step it picks, oldest admission first,
// one token for every running request that is decoding, then prefill chunks for running
// requests still prefilling, then admits waiting requests (FIFO) while there is room: at most
// max_running_requests running, at most max_batch_tokens tokens per step, and KV blocks
// reserved for every scheduled token. When a decoding request needs a block and none is free,
// the youngest running request is preempted (its blocks freed; it is recomputed later) — a
// request alone in the engine that outgrows the whole cache is reported for finishing instead.
// A waiting request is admitted only when its VariantGate says its variant is ready; requests
// behind it that are ready go first. Engine-thread only.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "server/engine/kv_block_allocator.h"
#include "server/engine/request_state.h"

namespace deltaserve::engine {

// VariantGate: whether a request's variant can run now. Acquire is asked before admission and
// holds what the request needs until Release, which the scheduler calls when the request
// leaves the running set (finished or preempted).
class VariantGate {
 public:
  virtual ~VariantGate() = default;
  // StartAdmission begins one pass over the waiting requests (oldest first).
  virtual void StartAdmission() {}
  virtual bool Acquire(RequestState* request) = 0;
  virtual void Release(RequestState* request) = 0;
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 2048;
  int64_t max_running_requests = 64;
};

struct ScheduledSlice {
  RequestState* request;
  int64_t start;   // == request->computed before the step
  int64_t length;  // tokens of the request in this step
};

struct Schedule {
  std::vector<ScheduledSlice> slices;
  // Requests that can never fit in the KV cache and must be finished (kLength).
  std::vector<RequestState*> out_of_memory;
  int64_t TotalTokens() const;
};

class Scheduler {
 public:
  // gate may be null: every variant is always ready.
  Scheduler(SchedulerOptions options, KvBlockAllocator* allocator, VariantGate* gate = nullptr)
      : options_(options), allocator_(allocator), gate_(gate) {}

  void Enqueue(RequestState* request) { waiting_.push_back(request); }
  // Remove takes a request out of the running or waiting set and frees its blocks.
  void Remove(RequestState* request);
  Schedule Next();

  const std::vector<RequestState*>& running() const { return running_; }
  const std::deque<RequestState*>& waiting() const { return waiting_; }
  int64_t preemptions() const { return preemptions_; }

 private:
  bool Reserve(RequestState* request, int64_t tokens);
  void Preempt(RequestState* request);

  SchedulerOptions options_;
  KvBlockAllocator* allocator_;
  VariantGate* gate_;
  std::vector<RequestState*> running_;  // ordered by admission (oldest first)
  std::deque<RequestState*> waiting_;   // FIFO; preempted requests go to the front
  uint64_t next_admission_ = 0;
  int64_t preemptions_ = 0;
};

}  // namespace deltaserve::engine
