#include "server/engine/engine.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/common/retry_after.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/deltas/peft_adapter.h"
#include "server/deltas/delta_backend.h"
#include "server/engine/intra_op_threads.h"
#include "server/engine/kv_block_allocator.h"
#include "server/engine/logit_adjustments.h"
#include "server/engine/request_state.h"
#include "server/engine/sampler.h"
#include "server/engine/prefill_pacer.h"
#include "server/engine/scheduler.h"

namespace deltaserve::engine {
namespace {

// AdapterGate admits a request once its adapter is on the device, holding the device deltas
// (and the cache's running count) while the request runs. Fairness, within one admission pass
// (oldest first): the oldest request whose adapter is absent keeps the room its load needs, so a
// younger request may not start running an idle resident adapter that the load must evict; and
// once that load cannot start until running requests let go of the device, younger adapter
// requests wait too (the base still runs): otherwise they could keep every resident adapter
// running, and the older request would starve. Both are decided here from the cache's state
// now, not from what its loader thread last concluded, so the order does not depend on timing.
class AdapterGate final : public VariantGate {
 public:
  explicit AdapterGate(AdapterCache* cache) : cache_(cache) {}
  void StartAdmission() override {
    oldest_absent_ = 0;
    older_request_blocked_ = false;
  }
  bool Acquire(RequestState* request) override {
    const uint64_t adapter = request->request.adapter_id;
    if (adapter == 0 || request->deltas != nullptr) return true;
    if (older_request_blocked_) return false;
    request->deltas = cache_->AcquireResident(adapter, /*keep_room_for=*/oldest_absent_);
    if (request->deltas != nullptr) return true;
    if (oldest_absent_ == 0) {  // (with none named, only an absent adapter is refused)
      oldest_absent_ = adapter;
      older_request_blocked_ = !cache_->CanMakeRoomFor(adapter);
    }
    return false;
  }
  void Release(RequestState* request) override {
    if (request->deltas == nullptr) return;
    request->deltas.reset();
    cache_->ReleaseRunning(request->request.adapter_id);
  }

 private:
  AdapterCache* cache_;
  uint64_t oldest_absent_ = 0;  // adapter of the oldest request this pass found not loaded
  bool older_request_blocked_ = false;
};

}  // namespace

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kDeadlineExceeded: return "deadline_exceeded";
    case FinishReason::kError: return "error";
  }
  return "unknown";
}

absl::Status EngineOptions::Validate() const {
  // Named as the server's flags, which set these one to one.
  auto positive = [](const char* flag, int64_t value) -> absl::Status {
    if (value > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(flag, " must be positive, got ", value));
  };
  RETURN_IF_ERROR(positive("--max-batch-tokens", max_batch_tokens));
  RETURN_IF_ERROR(positive("--max-running-requests", max_running_requests));
  RETURN_IF_ERROR(positive("--max-queued-requests", max_queued_requests));
  RETURN_IF_ERROR(positive("--kv-cache-bytes", kv_cache_bytes));
  RETURN_IF_ERROR(positive("--kv-block-tokens", kv_block_tokens));
  RETURN_IF_ERROR(positive("--default-max-tokens", default_max_tokens));
  RETURN_IF_ERROR(positive("--adapter-cache-bytes", adapter_cache_bytes));
  if (adapter_host_cache_bytes < 0) {
    return absl::InvalidArgumentError("--adapter-host-cache-bytes must not be negative");
  }
  RETURN_IF_ERROR(positive("--max-tokens-limit", max_tokens_limit));
  if (threads < 0) return absl::InvalidArgumentError("--threads must not be negative (0 = one per CPU core)");
  if (itl_target < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--itl-target-ms must not be negative (0 = no pacing of prompt chunks)");
  }
  if (default_max_tokens > max_tokens_limit) {
    return absl::InvalidArgumentError("--default-max-tokens must not exceed --max-tokens-limit");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    const EngineOptions& options, std::shared_ptr<const model::LlamaModel> model,
    std::shared_ptr<const model::Tokenizer> tokenizer, EngineObserver* observer) {
  RETURN_IF_ERROR(options.Validate());
  if (model == nullptr || tokenizer == nullptr) {
    return absl::InvalidArgumentError("Engine::Create needs a model and a tokenizer");
  }
  const int64_t block_bytes = model->KvCacheBytesPerToken() * options.kv_block_tokens;
  if (options.kv_cache_bytes / block_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-cache-bytes ", options.kv_cache_bytes, " holds no KV block (one block of ",
        options.kv_block_tokens, " tokens takes ", block_bytes, " bytes)"));
  }
  // All of it now, so that a budget the device cannot hold fails here and not mid-request.
  model::KvArena arena;
  absl::Status allocated = common::CatchTorchErrors("allocating the KV cache (--kv-cache-bytes)", [&] {
    arena = model->AllocateKvArena(options.kv_cache_bytes / block_bytes, options.kv_block_tokens);
  });
  if (!allocated.ok()) return absl::ResourceExhaustedError(allocated.message());
  return std::unique_ptr<Engine>(
      new Engine(options, std::move(model), std::move(tokenizer), observer, std::move(arena)));
}

Engine::Engine(const EngineOptions& options, std::shared_ptr<const model::LlamaModel> model,
               std::shared_ptr<const model::Tokenizer> tokenizer, EngineObserver* observer, model::KvArena kv_arena)
    : options_(options), model_(std::move(model)), tokenizer_(std::move(tokenizer)),
      observer_(observer), clock_(options.clock != nullptr ? options.clock : common::RealClock()),
      kv_arena_(std::move(kv_arena)) {
  delta_backend_ = deltas::MakeDeltaBackend(model_->device());
  allocator_ = std::make_unique<KvBlockAllocator>(kv_arena_.blocks(), kv_arena_.block_tokens(),
                                                  options_.prefix_caching);
  AdapterCacheOptions cache_options;
  cache_options.device_budget_bytes = options_.adapter_cache_bytes;
  cache_options.host_budget_bytes = options_.adapter_host_cache_bytes;
  cache_options.device = model_->device();
  cache_options.dtype = model_->dtype();
  cache_options.read = options_.read_adapter;
  cache_options.clock = clock_;
  if (!cache_options.read) {
    cache_options.read = [config = model_->config(), dtype = model_->dtype()](
                             const std::string& path) -> absl::StatusOr<deltas::DeltaSet> {
      ASSIGN_OR_RETURN(deltas::PeftAdapter adapter,
                       deltas::ReadPeftAdapter(path, config, dtype, at::kCPU));
      return std::move(adapter.deltas);
    };
  }
  adapters_ = std::make_unique<AdapterCache>(std::move(cache_options), observer_);
  adapters_->SetLoadListener([this] {
    absl::MutexLock lock(&mutex_);
    adapters_changed_ = true;
  });
  gate_ = std::make_unique<AdapterGate>(adapters_.get());
  scheduler_ = std::make_unique<Scheduler>(
      SchedulerOptions{options_.max_batch_tokens, options_.max_running_requests, options_.prefix_grouping},
      allocator_.get(), gate_.get());
  PrefillPacerOptions pacing;
  pacing.target = options_.itl_target;
  pacing.min_tokens = std::min<int64_t>(options_.kv_block_tokens, options_.max_batch_tokens);
  pacing.max_tokens = options_.max_batch_tokens;
  pacing.initial_tokens = std::min<int64_t>(64, options_.max_batch_tokens);
  pacer_ = std::make_unique<PrefillPacer>(pacing);
  {
    absl::MutexLock lock(&mutex_);
    snapshot_.kv_total_blocks = allocator_->total_blocks();
  }
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() { Stop(); }

void Engine::Stop() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status Engine::Validate(const EngineRequest& request) const {
  const int64_t vocab = model_->config().vocab_size;
  const int64_t context = model_->config().MaxContextLength();
  const auto& ids = request.prompt_token_ids;
  if (ids.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token id ", ids[i], " at index ", i,
                                                     " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  if (static_cast<int64_t>(ids.size()) >= context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", ids.size(), " tokens; the model's context is ", context,
        " tokens including generated ones"));
  }
  const int64_t kv_capacity = allocator_->total_blocks() * allocator_->block_tokens();
  if (static_cast<int64_t>(ids.size()) + 1 > kv_capacity) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", ids.size(), " tokens but the server's KV cache holds only ",
        kv_capacity, " tokens (--kv-cache-bytes)"));
  }
  const SamplingOptions& sampling = request.sampling;
  if (sampling.max_tokens < 0 || sampling.max_tokens > options_.max_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens ", sampling.max_tokens,
                                                   " is outside [0, ", options_.max_tokens_limit,
                                                   "] (0 means the default, ",
                                                   options_.default_max_tokens, ")"));
  }
  if (!(sampling.temperature >= 0.0f && sampling.temperature <= 100.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature ", sampling.temperature, " is outside [0, 100]"));
  }
  if (sampling.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k ", sampling.top_k, " is negative"));
  }
  if (!(sampling.top_p >= 0.0f && sampling.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p ", sampling.top_p, " is outside [0, 1]"));
  }
  if (sampling.n < 1 || sampling.n > options_.max_choices) {
    return absl::InvalidArgumentError(
        absl::StrCat("n ", sampling.n, " is outside [1, ", options_.max_choices, "] (sequences per request)"));
  }
  if (sampling.n > 1 && request.kind == RequestKind::kScore) {
    return absl::InvalidArgumentError("n > 1 applies to generation, not scoring");
  }
  if (static_cast<int64_t>(sampling.stop.size()) > options_.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", options_.max_stop_strings,
                                                   " stop strings are allowed, got ",
                                                   sampling.stop.size()));
  }
  for (const std::string& stop : sampling.stop) {
    if (stop.empty() || static_cast<int64_t>(stop.size()) > options_.max_stop_string_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "each stop string must be 1 to ", options_.max_stop_string_bytes, " bytes"));
    }
  }
  for (int32_t id : sampling.stop_token_ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return CheckLogitAdjustments(sampling, vocab);
}

absl::StatusOr<uint64_t> Engine::Submit(EngineRequest request, std::shared_ptr<RequestSink> sink) {
  RETURN_IF_ERROR(Validate(request));
  auto state = std::make_unique<RequestState>();
  state->tokens = request.prompt_token_ids;
  state->prompt_tokens = static_cast<int64_t>(state->tokens.size());
  int64_t wanted = request.sampling.max_tokens > 0 ? request.sampling.max_tokens
                                                   : options_.default_max_tokens;
  state->max_new_tokens =
      std::min(wanted, model_->config().MaxContextLength() - state->prompt_tokens);
  state->text = TextOutput(request.sampling.stop);
  state->arrival = clock_->Now();
  state->sink = std::move(sink);
  state->seed = request.sampling.seed.has_value() ? *request.sampling.seed : std::random_device{}();
  state->generator.seed(state->seed);
  if (request.sampling.n > 1) {
    state->fan_in = std::make_shared<ChoiceFanIn>(std::move(state->sink), request.sampling.n);
    state->sink = state->fan_in->Choice(0);
  }
  state->request = std::move(request);
  if (options_.prefix_caching) {
    state->prefix_salt = PrefixSalt(options_.base_fingerprint, state->request.adapter_id);
    state->prefix_keys = PrefixKeys(state->prefix_salt, state->tokens, options_.kv_block_tokens);
  }

  absl::MutexLock lock(&mutex_);
  if (stopping_) return absl::UnavailableError("the server is shutting down");
  // What the server can hold: the free running slots (the loop fills them from the queue at its
  // next step) plus the queue's room. Counting the waiting alone against the queue made a burst
  // that arrives between two steps fill the queue before the free slots took any of it.
  int64_t queued = static_cast<int64_t>(incoming_.size()) + snapshot_.queued_requests;
  const int64_t free_slots = std::max<int64_t>(0, options_.max_running_requests - snapshot_.running_requests);
  if (queued >= options_.max_queued_requests + free_slots) {
    return common::ResourceExhaustedWithRetry(
        absl::StrCat("the request queue is full (", queued - free_slots, " requests waiting, --max-queued-requests ",
                     options_.max_queued_requests, "); retry later"),
        absl::Seconds(1));
  }
  if (const int64_t limit = state->request.tenant_max_queued; limit > 0) {
    const std::string& tenant = state->request.tenant;
    auto published = queued_by_tenant_.find(tenant);
    int64_t tenant_queued = published == queued_by_tenant_.end() ? 0 : published->second;
    for (const auto& waiting : incoming_) tenant_queued += waiting->request.tenant == tenant ? 1 : 0;
    if (tenant_queued >= limit) {
      return common::ResourceExhaustedWithRetry(
          absl::StrCat("tenant \"", tenant, "\" has ", tenant_queued,
                       " requests waiting, its max_queued_requests quota; retry when they start"),
          absl::Seconds(1));
    }
  }
  if (state->request.adapter_id != 0) {
    absl::Status user = adapters_->AddUser(state->request.adapter_id);
    if (!user.ok()) {
      return absl::Status(user.code(), absl::StrCat("variant \"", state->request.variant_name,
                                                    "\": ", user.message()));
    }
  }
  state->id = next_id_++;
  state->family = state->id;
  uint64_t id = state->id;
  incoming_.push_back(std::move(state));
  ++snapshot_.active_requests;
  return id;
}

void Engine::Cancel(uint64_t request_id) {
  absl::MutexLock lock(&mutex_);
  cancelled_.push_back(request_id);
}

void Engine::FlushPrefixCache() {
  absl::MutexLock lock(&mutex_);
  flush_prefix_cache_ = true;
}

EngineSnapshot Engine::Snapshot() const {
  absl::MutexLock lock(&mutex_);
  return snapshot_;
}

bool Engine::AwaitSnapshot(const std::function<bool(const EngineSnapshot&)>& predicate, absl::Time deadline) const {
  absl::MutexLock lock(&mutex_);
  auto holds = [this, &predicate]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return predicate(snapshot_); };
  return clock_->AwaitWithDeadline(&mutex_, absl::Condition(&holds), deadline);
}

void Engine::PublishSnapshot() {
  // Tell the loader what waiting requests need, oldest first.
  std::vector<uint64_t> wanted;
  std::unordered_set<uint64_t> seen;
  for (const RequestState* request : scheduler_->waiting()) {
    const uint64_t id = request->request.adapter_id;
    if (id != 0 && seen.insert(id).second) wanted.push_back(id);
  }
  const std::vector<uint64_t> absent_list = adapters_->Want(std::move(wanted));
  const std::unordered_set<uint64_t> absent(absent_list.begin(), absent_list.end());
  int64_t waiting_for_adapter = 0;
  for (const RequestState* request : scheduler_->waiting()) {
    if (absent.count(request->request.adapter_id) > 0) ++waiting_for_adapter;
  }
  if (observer_ != nullptr) {
    EngineState state;
    state.requests_waiting_for_adapter = waiting_for_adapter;
    state.running_requests = static_cast<int64_t>(scheduler_->running().size());
    state.waiting_requests = static_cast<int64_t>(scheduler_->waiting().size());
    state.kv_cache_usage_ratio = allocator_->UsageRatio();
    state.kv_cached_blocks = allocator_->cached_blocks();
    auto names = [](auto begin, auto end) {
      std::vector<std::string> result;
      for (auto it = begin; it != end; ++it) {
        if (!(*it)->request.variant_name.empty()) result.push_back((*it)->request.variant_name);
      }
      std::sort(result.begin(), result.end());
      result.erase(std::unique(result.begin(), result.end()), result.end());
      return result;
    };
    state.running_variants = names(scheduler_->running().begin(), scheduler_->running().end());
    state.waiting_variants = names(scheduler_->waiting().begin(), scheduler_->waiting().end());
    observer_->OnState(state);
  }
  std::map<std::string, int64_t> queued_by_tenant;
  for (const RequestState* request : scheduler_->waiting()) ++queued_by_tenant[request->request.tenant];
  absl::MutexLock lock(&mutex_);
  queued_by_tenant_.swap(queued_by_tenant);
  snapshot_.active_requests = static_cast<int64_t>(requests_.size() + incoming_.size());
  snapshot_.queued_requests = static_cast<int64_t>(scheduler_->waiting().size());
  snapshot_.running_requests = static_cast<int64_t>(scheduler_->running().size());
  snapshot_.kv_used_blocks = allocator_->used_blocks();
  snapshot_.kv_total_blocks = allocator_->total_blocks();
  snapshot_.kv_cached_blocks = allocator_->cached_blocks();
  snapshot_.preemptions = scheduler_->preemptions();
  snapshot_.waiting_for_adapter = waiting_for_adapter;
}

void Engine::FailRequestsOfFailedLoads(absl::Time now) {
  for (const auto& [adapter_id, status] : adapters_->TakeLoadFailures()) {
    std::vector<RequestState*> affected;
    for (RequestState* request : scheduler_->waiting()) {
      if (request->request.adapter_id == adapter_id) affected.push_back(request);
    }
    for (RequestState* request : affected) {
      Finish(request, FinishReason::kError,
             absl::Status(status.code(), absl::StrCat("variant \"", request->request.variant_name,
                                                      "\" could not be loaded: ", status.message())),
             now);
    }
  }
}

void Engine::Finish(RequestState* request, FinishReason reason, absl::Status status,
                    absl::Time now, GenerationOutput final_output) {
  scheduler_->Remove(request);
  if (request->request.adapter_id != 0) adapters_->ReleaseUser(request->request.adapter_id);
  RequestResult result;
  result.reason = reason;
  result.status = std::move(status);
  result.final_output = std::move(final_output);
  result.usage.prompt_tokens = request->prompt_tokens;
  result.usage.cached_prompt_tokens = request->cached_tokens;
  result.usage.completion_tokens = request->GeneratedTokens();
  const bool scheduled = request->first_scheduled != absl::InfinitePast();
  result.usage.queue_time_seconds =
      absl::ToDoubleSeconds((scheduled ? request->first_scheduled : now) - request->arrival);
  const bool has_token = request->first_token != absl::InfinitePast();
  result.usage.time_to_first_token_seconds =
      has_token ? absl::ToDoubleSeconds(request->first_token - request->arrival) : 0.0;
  if (request->request.kind == RequestKind::kScore && reason == FinishReason::kStop) {
    result.scored_token_ids = request->tokens;
    result.token_logprobs = std::move(request->score_logprobs);
  }
  if (observer_ != nullptr) {
    FinishedRequestStats stats;
    stats.kind = request->request.kind;
    stats.reason = reason;
    stats.queue_seconds = result.usage.queue_time_seconds;
    stats.time_to_first_token_seconds = has_token ? result.usage.time_to_first_token_seconds : -1;
    stats.end_to_end_seconds = absl::ToDoubleSeconds(now - request->arrival);
    stats.prompt_tokens = request->prompt_tokens;
    stats.completion_tokens = request->GeneratedTokens();
    observer_->OnRequestFinished(stats);
  }
  std::shared_ptr<RequestSink> sink = std::move(request->sink);
  // Ended before its prompt was computed: the other choices were never forked and end with it.
  std::vector<std::shared_ptr<RequestSink>> unforked;
  if (request->fan_in != nullptr && !request->forked) {
    for (int32_t index = 1; index < request->request.sampling.n; ++index) {
      unforked.push_back(request->fan_in->Choice(index));
    }
  }
  requests_.erase(request->id);  // destroys *request
  for (auto& choice : unforked) {
    RequestResult ended;
    ended.reason = result.reason;
    ended.status = result.status;
    choice->OnFinished(std::move(ended));
  }
  if (sink != nullptr) sink->OnFinished(std::move(result));
}

void Engine::Loop() {
  c10::InferenceMode inference_mode;
  SetIntraOpThreadsOfThisThread(options_.threads);
  while (true) {
    std::vector<std::unique_ptr<RequestState>> arrivals;
    std::vector<uint64_t> cancels;
    bool stopping = false;
    bool flush = false;
    {
      absl::MutexLock lock(&mutex_);
      const bool busy = !requests_.empty() && !idle_;
      auto has_news = [this, busy]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return busy || stopping_ || !incoming_.empty() || !cancelled_.empty() || adapters_changed_ ||
               flush_prefix_cache_;
      };
      if (requests_.empty()) {
        mutex_.Await(absl::Condition(&has_news));
      } else {
        // Requests wait for adapters: look again soon anyway, for their deadlines.
        mutex_.AwaitWithTimeout(absl::Condition(&has_news), absl::Milliseconds(10));
      }
      adapters_changed_ = false;
      arrivals.swap(incoming_);
      // They wait in the scheduler now; count them there until the next snapshot says.
      snapshot_.queued_requests += static_cast<int64_t>(arrivals.size());
      for (const auto& arrival : arrivals) ++queued_by_tenant_[arrival->request.tenant];
      cancels.swap(cancelled_);
      stopping = stopping_;
      flush = flush_prefix_cache_;
      flush_prefix_cache_ = false;
    }
    // A variant that is gone (deleted, re-registered or replaced: a new id) leaves no prompt KV.
    if (flush) allocator_->DropAll();
    for (uint64_t adapter : adapters_->TakeRemoved()) {
      allocator_->DropSalt(PrefixSalt(options_.base_fingerprint, adapter));
    }
    absl::Time now = clock_->Now();
    for (auto& arrival : arrivals) {
      RequestState* request = arrival.get();
      requests_[request->id] = std::move(arrival);
      scheduler_->Enqueue(request);
    }
    if (stopping) {
      std::vector<RequestState*> all;
      for (auto& [id, request] : requests_) all.push_back(request.get());
      for (RequestState* request : all) {
        Finish(request, FinishReason::kCancelled,
               absl::UnavailableError("the server is shutting down"), now);
      }
      PublishSnapshot();
      return;
    }
    for (uint64_t id : cancels) {
      // The request and the choices forked from it.
      std::vector<RequestState*> family;
      for (auto& [other, request] : requests_) {
        if (request->family == id) family.push_back(request.get());
      }
      for (RequestState* request : family) Finish(request, FinishReason::kCancelled, absl::OkStatus(), now);
    }
    std::vector<RequestState*> expired;
    for (auto& [id, request] : requests_) {
      if (now >= request->request.deadline) expired.push_back(request.get());
    }
    for (RequestState* request : expired) {
      Finish(request, FinishReason::kDeadlineExceeded, absl::OkStatus(), now);
    }
    FailRequestsOfFailedLoads(now);

    scheduler_->set_prefill_cap(pacer_->Budget());
    Schedule schedule = scheduler_->Next();
    idle_ = schedule.slices.empty() && schedule.out_of_memory.empty();
    for (RequestState* request : schedule.out_of_memory) {
      // Removed from the scheduler by Finish; its slice (if any) must not run.
      schedule.slices.erase(std::remove_if(schedule.slices.begin(), schedule.slices.end(),
                                           [request](const ScheduledSlice& slice) {
                                             return slice.request == request;
                                           }),
                            schedule.slices.end());
      GenerationOutput last;
      last.text = request->text.Flush();
      Finish(request, FinishReason::kLength, absl::OkStatus(), now, std::move(last));
    }
    if (!schedule.slices.empty()) {
      // The forward pass reports its own errors; anything else libtorch throws in a step (a
      // KV allocation failing on a full device, say) fails the step's requests, not the server.
      std::vector<uint64_t> ids;
      for (const ScheduledSlice& slice : schedule.slices) ids.push_back(slice.request->id);
      absl::Status step = common::CatchTorchErrors("engine step", [&] { RunStep(schedule); });
      if (!step.ok()) {
        const bool memory = absl::StrContains(step.message(), "out of memory") ||
                            absl::StrContains(step.message(), "allocate");
        if (memory) step = absl::ResourceExhaustedError(step.message());
        for (uint64_t id : ids) {
          auto it = requests_.find(id);
          if (it != requests_.end()) {
            Finish(it->second.get(), FinishReason::kError, step, clock_->Now());
          }
        }
      }
    }
    PublishSnapshot();
  }
}

void Engine::RunStep(Schedule& schedule) {
  const absl::Time started = clock_->Now();
  // The pacer learns from physical time, whatever clock the engine reads deadlines from.
  const absl::Time wall_started = absl::Now();
  // Rows of one variant side by side: each variant's low-rank terms then run once per step, not
  // once per request. (Row order does not change any row's result.)
  std::stable_sort(schedule.slices.begin(), schedule.slices.end(),
                   [](const ScheduledSlice& a, const ScheduledSlice& b) {
                     return a.request->deltas.get() < b.request->deltas.get();
                   });
  model::ForwardBatch batch;
  batch.kv_arena = &kv_arena_;
  std::vector<deltas::DeltaSegment> segments;
  int64_t row = 0;
  for (ScheduledSlice& slice : schedule.slices) {
    RequestState* request = slice.request;
    if (request->first_scheduled == absl::InfinitePast()) {
      request->first_scheduled = started;
      if (observer_ != nullptr) {
        observer_->OnPromptTokens(request->prompt_tokens);
        observer_->OnPrefixCache(request->cached_tokens, request->prompt_tokens - request->cached_tokens);
      }
    }
    const int64_t needed = slice.start + slice.length;
    for (int64_t i = 0; i < slice.length; ++i) {
      batch.token_ids.push_back(request->tokens[slice.start + i]);
    }
    batch.sequences.push_back({slice.start, slice.length, &request->kv_blocks});
    const deltas::DeltaSet* variant = request->deltas.get();
    if (!segments.empty() && segments.back().deltas == variant) {
      segments.back().length += slice.length;
    } else {
      segments.push_back({row, slice.length, variant});
    }
    const int64_t total = static_cast<int64_t>(request->tokens.size());
    if (request->request.kind == RequestKind::kScore) {
      for (int64_t i = 0; i < slice.length; ++i) {
        if (slice.start + i + 1 < total) batch.logit_rows.push_back(row + i);
      }
    } else if (needed == total) {
      batch.logit_rows.push_back(row + slice.length - 1);
    }
    row += slice.length;
  }
  // The model returns every row for an empty list; when no slice needs logits (a score
  // request's last chunk holds only its final token) ask for one row and read none.
  if (batch.logit_rows.empty()) batch.logit_rows.push_back(0);
  // One data path for every variant: base products over all rows, then each segment's deltas.
  const std::unique_ptr<model::ProjectionDeltaHook> hook = delta_backend_->ForStep(segments);
  batch.deltas = hook.get();
  absl::StatusOr<at::Tensor> logits = model_->Run(batch);
  const absl::Time now = clock_->Now();
  if (!logits.ok()) {
    for (ScheduledSlice& slice : schedule.slices) {
      Finish(slice.request, FinishReason::kError, logits.status(), now);
    }
    return;
  }
  pacer_->Observe(schedule.decode_tokens, schedule.prefill_tokens, absl::Now() - wall_started);
  for (ScheduledSlice& slice : schedule.slices) {
    slice.request->computed += slice.length;
    RegisterPromptBlocks(slice.request);
  }
  HandleLogits(schedule, *logits, now);
  if (observer_ != nullptr) {
    StepStats stats;
    stats.batch_tokens = schedule.TotalTokens();
    stats.step_seconds = absl::ToDoubleSeconds(now - started);
    observer_->OnStep(stats);
  }
}

void Engine::RegisterPromptBlocks(RequestState* request) {
  if (!allocator_->prefix_caching()) return;
  const int64_t block_tokens = allocator_->block_tokens();
  const int64_t full = std::min(request->computed, request->prompt_tokens) / block_tokens;
  for (int64_t i = request->registered_blocks; i < full; ++i) {
    allocator_->Register(request->kv_blocks[i], request->prefix_salt, request->prefix_keys[i],
                         request->tokens.data() + i * block_tokens);
  }
  request->registered_blocks = std::max(request->registered_blocks, full);
}

namespace {

// NonFinite: the request's error when its logits hold a NaN or an infinity (a broken variant or
// an overflow): it fails INTERNAL rather than emit a token picked from garbage.
absl::Status NonFinite(const RequestState& request) {
  return absl::InternalError(absl::StrCat(
      "the model produced non-finite logits (NaN or infinity) at position ", request.computed,
      request.request.variant_name.empty() ? std::string(" of the base model")
                                           : absl::StrCat(" through variant \"", request.request.variant_name, "\""),
      "; no token was produced from them"));
}

bool AllFinite(const float* values, int64_t count) {
  return std::all_of(values, values + count, [](float value) { return std::isfinite(value); });
}

}  // namespace

void Engine::HandleLogits(Schedule& schedule, const at::Tensor& logits_tensor, absl::Time now) {
  at::Tensor logits = logits_tensor.to(at::kCPU).contiguous();
  const int64_t vocab = model_->config().vocab_size;
  int64_t row = 0;
  for (ScheduledSlice& slice : schedule.slices) {
    RequestState* request = slice.request;
    const int64_t total = static_cast<int64_t>(request->tokens.size());
    if (request->request.kind == RequestKind::kScore) {
      bool finite = true;
      for (int64_t i = 0; i < slice.length; ++i) {
        const int64_t target_position = slice.start + i + 1;
        if (target_position >= total) continue;
        const float* values = logits.data_ptr<float>() + row * vocab;
        finite &= AllFinite(values, vocab);
        request->score_logprobs.push_back(
            LogProbability(values, vocab, request->tokens[target_position]));
        ++row;
      }
      if (!finite) {
        Finish(request, FinishReason::kError, NonFinite(*request), now);
      } else if (request->computed == total) {
        Finish(request, FinishReason::kStop, absl::OkStatus(), now);
      }
      continue;
    }
    if (request->computed != total) continue;  // prefill chunk that did not reach the end
    const float* values = logits.data_ptr<float>() + row * vocab;
    ++row;
    if (!AllFinite(values, vocab)) {
      Finish(request, FinishReason::kError, NonFinite(*request), now);
      continue;
    }
    // The other choices of an n > 1 request start from the same prompt and logits.
    std::vector<RequestState*> choices = {request};
    if (request->fan_in != nullptr && !request->forked) {
      request->forked = true;
      for (int32_t index = 1; index < request->request.sampling.n; ++index) {
        if (RequestState* choice = Fork(request, index)) choices.push_back(choice);
      }
    }
    for (RequestState* choice : choices) EmitToken(choice, values, now);
  }
}

void Engine::EmitToken(RequestState* request, const float* values, absl::Time now) {
  const int64_t vocab = model_->config().vocab_size;
  const SamplingOptions& sampling = request->request.sampling;
  const TokenHistory history{request->tokens.data(), static_cast<int64_t>(request->tokens.size()),
                             request->prompt_tokens};
  SampledToken sampled = SampleToken(values, vocab, sampling, history, request->generator);
  request->tokens.push_back(sampled.token_id);
  if (request->first_token == absl::InfinitePast()) {
    request->first_token = now;
  } else if (observer_ != nullptr) {
    observer_->OnInterTokenLatency(absl::ToDoubleSeconds(now - request->last_token));
  }
  request->last_token = now;
  if (observer_ != nullptr) observer_->OnGeneratedTokens(1);

  GenerationOutput output;
  output.token_ids.push_back(sampled.token_id);
  if (sampling.logprobs) output.logprobs.push_back(sampled.logprob);
  output.text = request->text.Append(tokenizer_->TokenBytes(sampled.token_id));
  const bool stop_token =
      (!sampling.ignore_eos && tokenizer_->IsEos(sampled.token_id)) ||
      std::find(sampling.stop_token_ids.begin(), sampling.stop_token_ids.end(), sampled.token_id) !=
          sampling.stop_token_ids.end();
  if (stop_token || request->text.Stopped()) {
    output.text += request->text.Flush();
    Finish(request, FinishReason::kStop, absl::OkStatus(), now, std::move(output));
  } else if (request->GeneratedTokens() >= request->max_new_tokens) {
    output.text += request->text.Flush();
    Finish(request, FinishReason::kLength, absl::OkStatus(), now, std::move(output));
  } else {
    request->sink->OnOutput(std::move(output));
  }
}

RequestState* Engine::Fork(RequestState* parent, int32_t index) {
  auto owned = std::make_unique<RequestState>();
  RequestState* choice = owned.get();
  {
    absl::MutexLock lock(&mutex_);
    choice->id = next_id_++;
  }
  choice->request = parent->request;
  choice->sink = parent->fan_in->Choice(index);
  choice->fan_in = parent->fan_in;
  choice->choice_index = index;
  choice->family = parent->family;
  choice->forked = true;
  choice->tokens = parent->tokens;
  choice->prompt_tokens = parent->prompt_tokens;
  choice->max_new_tokens = parent->max_new_tokens;
  choice->text = TextOutput(parent->request.sampling.stop);
  choice->arrival = parent->arrival;
  choice->first_scheduled = parent->first_scheduled;
  choice->seed = parent->seed + static_cast<uint64_t>(index);
  choice->generator.seed(choice->seed);
  choice->prefix_salt = parent->prefix_salt;
  choice->prefix_keys = parent->prefix_keys;
  choice->cached_tokens = parent->cached_tokens;
  if (choice->request.adapter_id != 0) adapters_->AddUser(choice->request.adapter_id).IgnoreError();  // the parent holds it
  requests_[choice->id] = std::move(owned);

  // Share the prompt's full blocks; copy the partial one (the choices write there next).
  const int64_t full = parent->computed / allocator_->block_tokens();
  allocator_->Share({parent->kv_blocks.begin(), parent->kv_blocks.begin() + full}, choice->kv_blocks);
  const bool partial = parent->computed % allocator_->block_tokens() != 0;
  bool ready = !partial || allocator_->TryAppend(1, choice->kv_blocks);
  if (ready && partial) kv_arena_.CopyBlock(parent->kv_blocks[full], choice->kv_blocks.back());
  if (ready) {
    choice->computed = parent->computed;
    choice->registered_blocks = std::min(parent->registered_blocks, full);
    ready = scheduler_->AdmitForked(choice);
  }
  if (!ready) {
    allocator_->Release(choice->kv_blocks);
    scheduler_->Enqueue(choice);
    return nullptr;
  }
  return choice;
}

}  // namespace deltaserve::engine
