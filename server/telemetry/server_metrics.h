// ServerMetrics: every Prometheus metric family deltaserve exports, defined here and nowhere
// else (names prefixed deltaserve_, base units, help text on each). It implements
// engine::EngineObserver for the engine's measurements and RecordRpc for the front ends.
// Thread-safe (prometheus-cpp metrics are); the registry outlives nothing it does not own.
#pragma once

#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "server/engine/engine_observer.h"

namespace deltaserve::telemetry {

class ServerMetrics : public engine::EngineObserver {
 public:
  explicit ServerMetrics(std::shared_ptr<prometheus::Registry> registry);

  // RecordRpc counts one finished RPC by method and gRPC status code name (e.g. "OK").
  void RecordRpc(const std::string& method, const std::string& code);

  void OnStep(const engine::StepStats& stats) override;
  void OnState(const engine::EngineState& state) override;
  void OnPromptTokens(int64_t count) override;
  void OnInterTokenLatency(double seconds) override;
  void OnGeneratedTokens(int64_t count) override;
  void OnRequestFinished(const engine::FinishedRequestStats& stats) override;

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& rpcs_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generated_tokens_;
  prometheus::Histogram& time_to_first_token_;
  prometheus::Histogram& inter_token_latency_;
  prometheus::Histogram& end_to_end_latency_;
  prometheus::Histogram& queue_time_;
  prometheus::Histogram& batch_tokens_;
  prometheus::Histogram& step_duration_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& kv_cache_usage_;
};

}  // namespace deltaserve::telemetry
