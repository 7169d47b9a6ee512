// Engine: runs requests against one model. One loop thread owns the model's KV caches and the
// scheduler; each iteration it schedules a batch (continuous batching, chunked prefill),
// runs one forward pass, samples, and hands output to each request's RequestSink.
//
// Submit() never blocks: it validates the request (INVALID_ARGUMENT with a message naming the
// field), answers RESOURCE_EXHAUSTED at once when the queue is full and UNAVAILABLE after
// Stop(), and otherwise queues it for the loop. Cancel() is asynchronous: the request finishes
// (kCancelled) and its KV blocks are freed at the next iteration. Thread-safe.
//
// The engine owns the AdapterCache: callers register adapters there and submit requests naming
// an adapter id. A request whose adapter is not on the device waits in the queue (others go
// ahead) while the cache's loader brings it in; if the load fails, the request fails with why.
//   ASSIGN_OR_RETURN(auto engine, Engine::Create(options, model, tokenizer, &metrics));
//   ASSIGN_OR_RETURN(uint64_t id, engine->Submit(std::move(request), sink));
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/deltas/delta_backend.h"
#include "server/engine/adapter_cache.h"
#include "server/engine/engine_observer.h"
#include "server/engine/engine_options.h"
#include "server/engine/request.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer.h"

namespace deltaserve::engine {

class KvBlockAllocator;
class Scheduler;
class PrefillPacer;
class VariantGate;
struct RequestState;
struct Schedule;

struct EngineSnapshot {
  int64_t active_requests = 0;  // accepted and not finished
  int64_t queued_requests = 0;  // accepted, not yet admitted to the running set
  int64_t running_requests = 0;
  int64_t kv_used_blocks = 0;
  int64_t kv_total_blocks = 0;
  int64_t kv_cached_blocks = 0;  // holding a cached prompt prefix (some may be in kv_used_blocks)
  int64_t preemptions = 0;
  int64_t waiting_for_adapter = 0;  // queued requests whose adapter is not on the device
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      const EngineOptions& options, std::shared_ptr<const model::LlamaModel> model,
      std::shared_ptr<const model::Tokenizer> tokenizer, EngineObserver* observer = nullptr);
  ~Engine();

  absl::StatusOr<uint64_t> Submit(EngineRequest request, std::shared_ptr<RequestSink> sink);
  void Cancel(uint64_t request_id);
  // FlushPrefixCache forgets every cached prompt block (at the loop's next iteration); blocks that
  // running requests hold stay theirs.
  void FlushPrefixCache();
  // Stop finishes every request still in the engine (kCancelled, UNAVAILABLE) and joins the
  // loop thread. Idempotent.
  void Stop();

  EngineSnapshot Snapshot() const;
  // AwaitSnapshot blocks until `predicate` holds for the published snapshot (checked whenever the
  // loop publishes one) or clock().Now() reaches `deadline`; returns whether it holds.
  //   engine->AwaitSnapshot([](const EngineSnapshot& s) { return s.active_requests == 0; }, deadline);
  bool AwaitSnapshot(const std::function<bool(const EngineSnapshot&)>& predicate, absl::Time deadline) const;
  common::Clock& clock() const { return *clock_; }
  const model::Tokenizer& tokenizer() const { return *tokenizer_; }
  const model::LlamaModel& model() const { return *model_; }
  const EngineOptions& options() const { return options_; }
  AdapterCache& adapters() { return *adapters_; }
  const AdapterCache& adapters() const { return *adapters_; }

 private:
  Engine(const EngineOptions& options, std::shared_ptr<const model::LlamaModel> model,
         std::shared_ptr<const model::Tokenizer> tokenizer, EngineObserver* observer, model::KvArena kv_arena);
  absl::Status Validate(const EngineRequest& request) const;
  void Loop();
  void RunStep(Schedule& schedule);
  // RegisterPromptBlocks caches the request's full prompt blocks computed so far.
  void RegisterPromptBlocks(RequestState* request);
  void HandleLogits(Schedule& schedule, const at::Tensor& logits, absl::Time now);
  // EmitToken samples the request's next token from `values` and hands it on (or finishes).
  void EmitToken(RequestState* request, const float* values, absl::Time now);
  // Fork makes choice `index` of a request with n > 1 whose prompt was just computed: it shares
  // the prompt's full blocks, gets a copy of the partial one, and runs at once; when no block is
  // free it waits in the queue instead, to compute its prompt (then null is returned).
  RequestState* Fork(RequestState* parent, int32_t index);
  void Finish(RequestState* request, FinishReason reason, absl::Status status, absl::Time now,
              GenerationOutput final_output = {});
  void PublishSnapshot();
  void FailRequestsOfFailedLoads(absl::Time now);

  const EngineOptions options_;
  const std::shared_ptr<const model::LlamaModel> model_;
  const std::shared_ptr<const model::Tokenizer> tokenizer_;
  EngineObserver* const observer_;
  common::Clock* const clock_;

  mutable absl::Mutex mutex_;
  // Submitted requests not yet picked up by the loop.
  std::vector<std::unique_ptr<RequestState>> incoming_ ABSL_GUARDED_BY(mutex_);
  std::vector<uint64_t> cancelled_ ABSL_GUARDED_BY(mutex_);
  bool flush_prefix_cache_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  // What the loop last published (plus the requests it has taken since); Submit bounds the
  // queue with incoming_ + queued_requests, and a tenant's with incoming_ + queued_by_tenant_.
  EngineSnapshot snapshot_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int64_t> queued_by_tenant_ ABSL_GUARDED_BY(mutex_);
  // An adapter load finished since the loop last looked.
  bool adapters_changed_ ABSL_GUARDED_BY(mutex_) = false;
  // Declared after mutex_: destroyed first, its loader's listener locks mutex_.
  std::unique_ptr<AdapterCache> adapters_;

  // Loop-thread state. The KV memory of every request, allocated once, and which of its blocks
  // are free.
  const model::KvArena kv_arena_;
  std::unique_ptr<KvBlockAllocator> allocator_;
  std::unique_ptr<VariantGate> gate_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<PrefillPacer> pacer_;
  // How a step's variants are applied, chosen for the model's device (delta_backend.h).
  std::unique_ptr<deltas::DeltaBackend> delta_backend_;
  // The last iteration scheduled nothing: wait for news instead of spinning.
  bool idle_ = false;
  std::unordered_map<uint64_t, std::unique_ptr<RequestState>> requests_;
  std::thread thread_;
};

}  // namespace deltaserve::engine
