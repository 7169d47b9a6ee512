// Scheduler: iteration-level continuous batching. Each step it picks, oldest admission first,
// one token for every running request that is decoding, then prefill chunks for running
// requests still prefilling, then admits waiting requests (FIFO) while there is room: at most
// max_running_requests running, at most max_batch_tokens tokens per step, and KV blocks
// reserved for every scheduled token. In a step that decodes, prefill chunks and admissions
// together take at most prefill_cap tokens (set each step from the PrefillPacer, so that one long
// prompt cannot stall the running streams). When a decoding request needs a block and none is free,
// the youngest running request is preempted (its blocks freed; it is recomputed later) — a
// request alone in the engine that outgrows the whole cache is reported for finishing instead.
// A waiting request is admitted only when its VariantGate says its variant is ready; requests
// behind it that are ready go first. At admission a request shares the longest run of cached
// blocks of its prompt (KvBlockAllocator's prefix cache), always leaving at least one token to
// compute, and starts computing after them; cached tokens cost neither step budget nor counter.
// Global prefix sharing (after BatchLLM, Zheng et al. 2024, done online): within the tenant whose
// turn it is (VTC decides that as before), the waiting request with the longest cached prefix
// goes first, so the sharers of a prefix run while it is cached instead of interleaving with
// unrelated prompts until it is evicted (the oldest is passed over at most max_passed_over
// times); and a request whose next prompt block a running request is computing waits for it,
// so a prefix that many waiting requests share is computed once. Prompt chunks still ride along
// with decodes under the pacer's cap.
// Fairness between tenants (EngineRequest::tenant) follows the virtual token counter scheme
// (VTC, Sheng et al., "Fairness in Serving Large Language Models", OSDI 2024): each tenant's
// counter grows by the tokens scheduled for it (prompt and generated) divided by its weight;
// admission takes the waiting request of the tenant with the smallest counter (oldest first
// within a tenant, so one tenant alone is served FIFO); a tenant that becomes active (no
// request waiting or running before) starts at least at the smallest counter among the active
// tenants, so idle time earns no credit. Engine-thread only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
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
  // Global prefix sharing (see the top of this file); with the allocator's prefix cache only.
  bool prefix_grouping = true;
  // How many of the chosen tenant's waiting requests are compared for their cached prefix, and
  // how often its oldest may be passed over for one with a longer cached prefix.
  int prefix_lookahead = 64;
  int max_passed_over = 16;
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
  int64_t decode_tokens = 0;   // slices of decoding requests (one token each)
  int64_t prefill_tokens = 0;  // the rest: prompt chunks
  int64_t TotalTokens() const;
};

class Scheduler {
 public:
  // gate may be null: every variant is always ready.
  Scheduler(SchedulerOptions options, KvBlockAllocator* allocator, VariantGate* gate = nullptr)
      : options_(options), allocator_(allocator), gate_(gate) {}

  void Enqueue(RequestState* request);
  // AdmitForked puts a request straight into the running set (a choice forked from a running
  // request, holding blocks already); false when its VariantGate refuses (nothing changed).
  bool AdmitForked(RequestState* request);
  // Remove takes a request out of the running or waiting set and frees its blocks.
  void Remove(RequestState* request);
  Schedule Next();
  // set_prefill_cap: prefill tokens allowed in a step that also decodes (at least 1).
  void set_prefill_cap(int64_t tokens) { prefill_cap_ = std::max<int64_t>(1, tokens); }

  const std::vector<RequestState*>& running() const { return running_; }
  const std::deque<RequestState*>& waiting() const { return waiting_; }
  int64_t preemptions() const { return preemptions_; }
  // The virtual token counter of a tenant (0 for one never seen).
  double counter(const std::string& tenant) const;

 private:
  // CachedPrefix: the cached blocks the request would share if admitted now.
  std::vector<int32_t> CachedPrefix(const RequestState* request) const;
  // PreferCachedPrefix: among the waiting requests of waiting_[oldest]'s tenant (up to
  // prefix_lookahead, not skipped), the index of the one with the longest cached prefix; `oldest`
  // on ties or once it was passed over max_passed_over times.
  size_t PreferCachedPrefix(size_t oldest, const std::vector<const RequestState*>& skipped);
  // Reserve makes the request hold blocks for `tokens` tokens; false when they are not available.
  bool Reserve(RequestState* request, int64_t tokens);
  void Preempt(RequestState* request);
  // Charge adds scheduled tokens to the request's tenant's counter.
  void Charge(const RequestState* request, int64_t tokens);
  // NextCandidate: the index in waiting_ of the request to try admitting next (smallest
  // counter, then oldest), skipping `skipped`; waiting_.size() when none is left.
  size_t NextCandidate(const std::vector<const RequestState*>& skipped) const;

  SchedulerOptions options_;
  KvBlockAllocator* allocator_;
  VariantGate* gate_;
  std::vector<RequestState*> running_;  // ordered by admission (oldest first)
  std::deque<RequestState*> waiting_;   // FIFO; preempted requests go to the front
  uint64_t next_admission_ = 0;
  int64_t preemptions_ = 0;
  int64_t prefill_cap_ = INT64_MAX;
  std::map<std::string, double> counters_;          // virtual token counters by tenant
  std::map<std::string, int64_t> active_requests_;  // waiting or running, by tenant
};

}  // namespace deltaserve::engine
