// ServerMetrics: every Prometheus metric family deltaserve exports, defined here and nowhere
// else (names prefixed deltaserve_, base units, help text on each). With vllm_gauges it also
// exports, under vLLM's names, the four gauges the Kubernetes Gateway API Inference Extension's
// endpoint picker reads by default: vllm:num_requests_waiting, vllm:num_requests_running,
// vllm:kv_cache_usage_perc (a fraction from 0 to 1, as vLLM's despite the name) and
// vllm:lora_requests_info (labels running_lora_adapters, waiting_lora_adapters, max_lora; value
// the Unix time of the last change), each the same value as its deltaserve_ twin. It implements
// engine::EngineObserver for the engine's measurements, control::JobObserver for the job
// runner's, and RecordRpc for the front ends.
// Thread-safe (prometheus-cpp metrics are); a scrape sees the gauges of one engine state (OnState
// and Exposition's collection exclude each other), so each gauge equals its twin in one scrape.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "server/control/job_observer.h"
#include "server/engine/engine_observer.h"

namespace deltaserve::telemetry {

class ServerMetrics : public engine::EngineObserver, public control::JobObserver {
 public:
  // max_lora: how many distinct adapters one batch may hold (reported on lora_requests_info).
  ServerMetrics(std::shared_ptr<prometheus::Registry> registry, int64_t max_lora, bool vllm_gauges = true);

  // RecordRpc counts one finished RPC by method and gRPC status code name (e.g. "OK").
  void RecordRpc(const std::string& method, const std::string& code);

  void OnStep(const engine::StepStats& stats) override;
  void OnState(const engine::EngineState& state) override;
  void OnPromptTokens(int64_t count) override;
  void OnPrefixCache(int64_t hit_tokens, int64_t miss_tokens) override;
  void OnInterTokenLatency(double seconds) override;
  void OnGeneratedTokens(int64_t count) override;
  void OnRequestFinished(const engine::FinishedRequestStats& stats) override;
  void OnAdapterResidency(const engine::AdapterResidency& residency) override;
  void OnAdapterLoad(engine::AdapterTier from, double seconds) override;
  void OnAdapterEviction(engine::AdapterTier from) override;
  void OnJobState(control::JobKind kind, std::optional<control::JobState> from, control::JobState to, double run_seconds,
                  int64_t reserved_bytes) override;

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }
  // Exposition: the metrics in Prometheus' text format 0.0.4 (what GET /metrics returns), with
  // the vLLM-named gauges when asked (and enabled). They are kept apart because ':' is reserved
  // for recording rules and fails `promtool check metrics`: the metrics port serves
  // deltaserve_* only (what Prometheus scrapes), the HTTP API port adds the vLLM names (what the
  // endpoint picker scrapes, on the pool's target port, as from vLLM itself).
  std::string Exposition(bool with_vllm_gauges) const;
  static constexpr const char* kExpositionContentType = "text/plain; version=0.0.4; charset=utf-8";

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& rpcs_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generated_tokens_;
  prometheus::Counter& prefix_hit_tokens_;
  prometheus::Counter& prefix_miss_tokens_;
  prometheus::Histogram& time_to_first_token_;
  prometheus::Histogram& inter_token_latency_;
  prometheus::Histogram& end_to_end_latency_;
  prometheus::Histogram& queue_time_;
  prometheus::Histogram& batch_tokens_;
  prometheus::Histogram& step_duration_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& kv_cache_usage_;
  prometheus::Gauge& kv_cached_blocks_;
  prometheus::Gauge& waiting_for_adapter_;
  // Per tier (indexed by engine::AdapterTier); label tier="device"|"host"|"disk".
  prometheus::Gauge* adapters_resident_[engine::kAdapterTierCount];
  prometheus::Gauge* adapter_bytes_[engine::kAdapterTierCount];
  // Label from=; null where no such move exists (loads from the device, evictions from disk).
  prometheus::Counter* adapter_loads_[engine::kAdapterTierCount];
  prometheus::Counter* adapter_evictions_[engine::kAdapterTierCount];
  prometheus::Histogram& adapter_load_duration_;
  // Jobs by kind (label kind="merge", ...): queued and running now, ended by final state, run
  // time, and the job memory running jobs reserve.
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Counter>& jobs_finished_;
  prometheus::Family<prometheus::Histogram>& job_run_seconds_;
  prometheus::Gauge& job_memory_reserved_;
  // A lora_requests_info family: one series whose labels list the running and waiting
  // adapters (the contract routers read); replaced when the lists change. Touched only from
  // OnState (the engine thread).
  struct LoraInfo {
    prometheus::Family<prometheus::Gauge>* family = nullptr;
    prometheus::Gauge* series = nullptr;
    std::string running, waiting;
    void Set(const std::string& running_now, const std::string& waiting_now, const std::string& max_lora);
  };
  LoraInfo lora_requests_info_;
  const std::string max_lora_;
  // The vLLM-named twins, in their own registry (absent without vllm_gauges).
  std::shared_ptr<prometheus::Registry> vllm_registry_;
  prometheus::Gauge* vllm_running_ = nullptr;
  prometheus::Gauge* vllm_waiting_ = nullptr;
  prometheus::Gauge* vllm_kv_cache_usage_ = nullptr;
  LoraInfo vllm_lora_requests_info_;
  // Held by OnState while it sets the state gauges and by Exposition while it collects.
  mutable std::mutex state_mutex_;
};

}  // namespace deltaserve::telemetry
