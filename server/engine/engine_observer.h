// EngineObserver: how the engine reports what it does (telemetry implements it with
// Prometheus; tests may record). Called on the engine thread, and the OnAdapter* methods also
// on the adapter loader and registration threads; must be thread-safe, cheap and non-blocking.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "server/engine/request.h"

namespace deltaserve::engine {

// Where an adapter's deltas are: ready on the device, in host memory, or only on disk.
enum class AdapterTier { kDevice = 0, kHost = 1, kDisk = 2 };
inline constexpr int kAdapterTierCount = 3;
const char* AdapterTierName(AdapterTier tier);  // "device", "host", "disk"

// Adapters and their bytes per tier (indexed by AdapterTier).
struct AdapterResidency {
  int64_t count[kAdapterTierCount] = {0, 0, 0};
  int64_t bytes[kAdapterTierCount] = {0, 0, 0};
};

struct StepStats {
  int64_t batch_tokens = 0;
  double step_seconds = 0;
};

// Reported after every loop iteration, so gauges settle when the engine goes idle.
struct EngineState {
  int64_t running_requests = 0;
  int64_t waiting_requests = 0;
  double kv_cache_usage_ratio = 0;
  // KV blocks holding a cached prompt prefix (referenced by running requests or not).
  int64_t kv_cached_blocks = 0;
  // Waiting requests whose adapter is not on the device yet.
  int64_t requests_waiting_for_adapter = 0;
  // Distinct variant names (sorted) of running and of waiting requests; the base is not listed.
  std::vector<std::string> running_variants;
  std::vector<std::string> waiting_variants;
};

struct FinishedRequestStats {
  RequestKind kind = RequestKind::kGenerate;
  FinishReason reason = FinishReason::kStop;
  double queue_seconds = 0;
  double time_to_first_token_seconds = -1;  // < 0 when no token was generated
  double end_to_end_seconds = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const StepStats& stats) {}
  virtual void OnState(const EngineState& state) {}
  virtual void OnPromptTokens(int64_t count) {}
  // Once per request, when first scheduled: prompt tokens found in the prefix cache and the ones
  // to compute.
  virtual void OnPrefixCache(int64_t hit_tokens, int64_t miss_tokens) {}
  // One call per generated token after a request's first.
  virtual void OnInterTokenLatency(double seconds) {}
  virtual void OnGeneratedTokens(int64_t count) {}
  virtual void OnRequestFinished(const FinishedRequestStats& stats) {}
  // The adapter cache's tiers after a change.
  virtual void OnAdapterResidency(const AdapterResidency& residency) {}
  // An adapter reached the device from `from` (host or disk) in `seconds`.
  virtual void OnAdapterLoad(AdapterTier from, double seconds) {}
  // An adapter left `from` (device or host) to make room.
  virtual void OnAdapterEviction(AdapterTier from) {}
};

}  // namespace deltaserve::engine
