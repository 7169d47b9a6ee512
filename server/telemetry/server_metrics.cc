#include "server/telemetry/server_metrics.h"

#include <prometheus/text_serializer.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_join.h"

namespace deltaserve::telemetry {
namespace {

using prometheus::Histogram;

Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

Histogram& MakeHistogram(prometheus::Registry& registry, const std::string& name,
                         const std::string& help, Histogram::BucketBoundaries buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, buckets);
}

}  // namespace

ServerMetrics::ServerMetrics(std::shared_ptr<prometheus::Registry> registry, int64_t max_lora, bool vllm_gauges)
    : registry_(std::move(registry)),
      rpcs_(prometheus::BuildCounter()
                .Name("deltaserve_requests_total")
                .Help("Finished RPCs by method and gRPC status code")
                .Register(*registry_)),
      finished_(prometheus::BuildCounter()
                    .Name("deltaserve_request_finish_total")
                    .Help("Engine requests finished, by kind and finish reason")
                    .Register(*registry_)),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("deltaserve_prompt_tokens_total")
                         .Help("Prompt tokens of requests that started running")
                         .Register(*registry_)
                         .Add({})),
      generated_tokens_(prometheus::BuildCounter()
                            .Name("deltaserve_generated_tokens_total")
                            .Help("Tokens generated")
                            .Register(*registry_)
                            .Add({})),
      prefix_hit_tokens_(prometheus::BuildCounter()
                             .Name("deltaserve_prefix_cache_hit_tokens_total")
                             .Help("Prompt tokens whose KV came from the prefix cache")
                             .Register(*registry_)
                             .Add({})),
      prefix_miss_tokens_(prometheus::BuildCounter()
                              .Name("deltaserve_prefix_cache_miss_tokens_total")
                              .Help("Prompt tokens computed (not found in the prefix cache)")
                              .Register(*registry_)
                              .Add({})),
      time_to_first_token_(MakeHistogram(*registry_, "deltaserve_time_to_first_token_seconds",
                                         "Seconds from arrival to the first generated token",
                                         LatencyBuckets())),
      inter_token_latency_(MakeHistogram(*registry_, "deltaserve_inter_token_latency_seconds",
                                         "Seconds between consecutive tokens of a request",
                                         LatencyBuckets())),
      end_to_end_latency_(MakeHistogram(*registry_, "deltaserve_request_duration_seconds",
                                        "Seconds from arrival to finish of engine requests",
                                        LatencyBuckets())),
      queue_time_(MakeHistogram(*registry_, "deltaserve_request_queue_seconds",
                                "Seconds a request waited before its first forward pass",
                                LatencyBuckets())),
      batch_tokens_(MakeHistogram(*registry_, "deltaserve_batch_tokens",
                                  "Tokens in one forward pass (decode plus prefill)",
                                  {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192})),
      step_duration_(MakeHistogram(*registry_, "deltaserve_step_duration_seconds",
                                   "Seconds per engine iteration (one forward pass)",
                                   LatencyBuckets())),
      running_(prometheus::BuildGauge()
                   .Name("deltaserve_requests_running")
                   .Help("Requests in the running batch")
                   .Register(*registry_)
                   .Add({})),
      waiting_(prometheus::BuildGauge()
                   .Name("deltaserve_requests_waiting")
                   .Help("Requests accepted and waiting to run")
                   .Register(*registry_)
                   .Add({})),
      kv_cache_usage_(prometheus::BuildGauge()
                          .Name("deltaserve_kv_cache_usage_ratio")
                          .Help("Fraction of KV cache blocks held by requests (0 to 1); cached prefixes "
                                "nobody holds count as free")
                          .Register(*registry_)
                          .Add({})),
      kv_cached_blocks_(prometheus::BuildGauge()
                            .Name("deltaserve_prefix_cache_blocks")
                            .Help("KV cache blocks holding a cached prompt prefix (held by requests or not)")
                            .Register(*registry_)
                            .Add({})),
      waiting_for_adapter_(prometheus::BuildGauge()
                               .Name("deltaserve_requests_waiting_for_adapter")
                               .Help("Waiting requests whose adapter is not on the device yet")
                               .Register(*registry_)
                               .Add({})),
      adapter_load_duration_(MakeHistogram(*registry_, "deltaserve_adapter_load_seconds",
                                           "Seconds to bring an adapter to the device (from host "
                                           "memory or disk)",
                                           LatencyBuckets())),
      jobs_(prometheus::BuildGauge()
                .Name("deltaserve_jobs")
                .Help("Jobs queued and running now, by kind and state")
                .Register(*registry_)),
      jobs_finished_(prometheus::BuildCounter()
                         .Name("deltaserve_jobs_finished_total")
                         .Help("Jobs that ended, by kind and final state (SUCCEEDED, FAILED, CANCELLED)")
                         .Register(*registry_)),
      job_run_seconds_(prometheus::BuildHistogram()
                           .Name("deltaserve_job_run_seconds")
                           .Help("Seconds jobs ran, from start to their end, by kind")
                           .Register(*registry_)),
      job_memory_reserved_(prometheus::BuildGauge()
                               .Name("deltaserve_job_memory_reserved_bytes")
                               .Help("Memory running jobs reserve of --job-memory-bytes (their estimates)")
                               .Register(*registry_)
                               .Add({})),
      max_lora_(std::to_string(max_lora)) {
  constexpr const char* kLoraInfoHelp =
      "Adapters of running and waiting requests (comma-separated labels); value: Unix time of the last change";
  lora_requests_info_.family =
      &prometheus::BuildGauge().Name("deltaserve_lora_requests_info").Help(kLoraInfoHelp).Register(*registry_);
  if (vllm_gauges) {
    vllm_registry_ = std::make_shared<prometheus::Registry>();
    // The endpoint picker's default metric names (vLLM's); the same values as the twins above.
    vllm_running_ = &prometheus::BuildGauge()
                         .Name("vllm:num_requests_running")
                         .Help("Requests in the running batch (= deltaserve_requests_running)")
                         .Register(*vllm_registry_)
                         .Add({});
    vllm_waiting_ = &prometheus::BuildGauge()
                         .Name("vllm:num_requests_waiting")
                         .Help("Requests waiting to run (= deltaserve_requests_waiting)")
                         .Register(*vllm_registry_)
                         .Add({});
    vllm_kv_cache_usage_ = &prometheus::BuildGauge()
                                .Name("vllm:kv_cache_usage_perc")
                                .Help("Fraction of the KV cache in use, 0 to 1 (= deltaserve_kv_cache_usage_ratio)")
                                .Register(*vllm_registry_)
                                .Add({});
    vllm_lora_requests_info_.family =
        &prometheus::BuildGauge().Name("vllm:lora_requests_info").Help(kLoraInfoHelp).Register(*vllm_registry_);
  }
  auto& resident = prometheus::BuildGauge()
                       .Name("deltaserve_adapters_resident")
                       .Help("Registered adapters by where their deltas are (device, host, disk)")
                       .Register(*registry_);
  auto& bytes = prometheus::BuildGauge()
                    .Name("deltaserve_adapter_resident_bytes")
                    .Help("Bytes of adapter deltas by tier (device, host, disk)")
                    .Register(*registry_);
  auto& loads = prometheus::BuildCounter()
                    .Name("deltaserve_adapter_loads_total")
                    .Help("Adapters brought to the device, by the tier they came from")
                    .Register(*registry_);
  auto& evictions = prometheus::BuildCounter()
                        .Name("deltaserve_adapter_evictions_total")
                        .Help("Adapters evicted to make room, by the tier they left")
                        .Register(*registry_);
  for (int tier = 0; tier < engine::kAdapterTierCount; ++tier) {
    const auto kind = static_cast<engine::AdapterTier>(tier);
    const std::string name = engine::AdapterTierName(kind);
    adapters_resident_[tier] = &resident.Add({{"tier", name}});
    adapter_bytes_[tier] = &bytes.Add({{"tier", name}});
    // Loads come from host or disk; evictions leave the device or the host.
    adapter_loads_[tier] = kind == engine::AdapterTier::kDevice ? nullptr : &loads.Add({{"from", name}});
    adapter_evictions_[tier] = kind == engine::AdapterTier::kDisk ? nullptr : &evictions.Add({{"from", name}});
  }
  OnState(engine::EngineState{});
}

void ServerMetrics::RecordRpc(const std::string& method, const std::string& code) {
  rpcs_.Add({{"method", method}, {"code", code}}).Increment();
}

void ServerMetrics::OnStep(const engine::StepStats& stats) {
  batch_tokens_.Observe(static_cast<double>(stats.batch_tokens));
  step_duration_.Observe(stats.step_seconds);
}

void ServerMetrics::OnState(const engine::EngineState& state) {
  std::lock_guard<std::mutex> lock(state_mutex_);
  running_.Set(static_cast<double>(state.running_requests));
  waiting_.Set(static_cast<double>(state.waiting_requests));
  kv_cache_usage_.Set(state.kv_cache_usage_ratio);
  kv_cached_blocks_.Set(static_cast<double>(state.kv_cached_blocks));
  waiting_for_adapter_.Set(static_cast<double>(state.requests_waiting_for_adapter));
  const std::string running = absl::StrJoin(state.running_variants, ",");
  const std::string waiting = absl::StrJoin(state.waiting_variants, ",");
  lora_requests_info_.Set(running, waiting, max_lora_);
  if (vllm_running_ != nullptr) {
    vllm_running_->Set(static_cast<double>(state.running_requests));
    vllm_waiting_->Set(static_cast<double>(state.waiting_requests));
    vllm_kv_cache_usage_->Set(state.kv_cache_usage_ratio);
    vllm_lora_requests_info_.Set(running, waiting, max_lora_);
  }
}

void ServerMetrics::LoraInfo::Set(const std::string& running_now, const std::string& waiting_now,
                                  const std::string& max_lora) {
  if (series != nullptr && running_now == running && waiting_now == waiting) return;
  if (series != nullptr) family->Remove(series);
  series = &family->Add(
      {{"running_lora_adapters", running_now}, {"waiting_lora_adapters", waiting_now}, {"max_lora", max_lora}});
  series->SetToCurrentTime();
  running = running_now;
  waiting = waiting_now;
}

void ServerMetrics::OnPromptTokens(int64_t count) { prompt_tokens_.Increment(static_cast<double>(count)); }

void ServerMetrics::OnPrefixCache(int64_t hit_tokens, int64_t miss_tokens) {
  prefix_hit_tokens_.Increment(static_cast<double>(hit_tokens));
  prefix_miss_tokens_.Increment(static_cast<double>(miss_tokens));
}
void ServerMetrics::OnInterTokenLatency(double seconds) { inter_token_latency_.Observe(seconds); }
void ServerMetrics::OnGeneratedTokens(int64_t count) {
  generated_tokens_.Increment(static_cast<double>(count));
}

void ServerMetrics::OnRequestFinished(const engine::FinishedRequestStats& stats) {
  const char* kind = stats.kind == engine::RequestKind::kScore ? "score" : "generate";
  finished_.Add({{"kind", kind}, {"reason", engine::FinishReasonName(stats.reason)}}).Increment();
  queue_time_.Observe(stats.queue_seconds);
  end_to_end_latency_.Observe(stats.end_to_end_seconds);
  if (stats.time_to_first_token_seconds >= 0) time_to_first_token_.Observe(stats.time_to_first_token_seconds);
}

void ServerMetrics::OnAdapterResidency(const engine::AdapterResidency& residency) {
  for (int tier = 0; tier < engine::kAdapterTierCount; ++tier) {
    adapters_resident_[tier]->Set(static_cast<double>(residency.count[tier]));
    adapter_bytes_[tier]->Set(static_cast<double>(residency.bytes[tier]));
  }
}

void ServerMetrics::OnAdapterLoad(engine::AdapterTier from, double seconds) {
  if (prometheus::Counter* counter = adapter_loads_[static_cast<int>(from)]) counter->Increment();
  adapter_load_duration_.Observe(seconds);
}

void ServerMetrics::OnAdapterEviction(engine::AdapterTier from) {
  if (prometheus::Counter* counter = adapter_evictions_[static_cast<int>(from)]) counter->Increment();
}

void ServerMetrics::OnJobState(control::JobKind kind, std::optional<control::JobState> from, control::JobState to,
                              double run_seconds, int64_t reserved_bytes) {
  using control::JobState;
  const std::string label = absl::AsciiStrToLower(control::JobKindName(kind));
  auto active = [](JobState state) { return state == JobState::kQueued || state == JobState::kRunning; };
  if (from.has_value() && active(*from)) jobs_.Add({{"kind", label}, {"state", control::JobStateName(*from)}}).Decrement();
  if (active(to)) {
    jobs_.Add({{"kind", label}, {"state", control::JobStateName(to)}}).Increment();
  } else {
    jobs_finished_.Add({{"kind", label}, {"state", control::JobStateName(to)}}).Increment();
    if (from == JobState::kRunning) {
      job_run_seconds_
          .Add({{"kind", label}}, Histogram::BucketBoundaries{0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600})
          .Observe(run_seconds);
    }
  }
  job_memory_reserved_.Set(static_cast<double>(reserved_bytes));
}

std::string ServerMetrics::Exposition(bool with_vllm_gauges) const {
  std::vector<prometheus::MetricFamily> families;
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    families = registry_->Collect();
    if (with_vllm_gauges && vllm_registry_ != nullptr) {
      std::vector<prometheus::MetricFamily> vllm = vllm_registry_->Collect();
      families.insert(families.end(), vllm.begin(), vllm.end());
    }
  }
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace deltaserve::telemetry
