// EngineOptions: the engine's limits, with their defaults. Validate() explains what is wrong.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/common/clock.h"
#include "server/engine/adapter_cache.h"

namespace deltaserve::engine {

struct EngineOptions {
  // Tokens per forward pass (decode tokens plus prefill chunks).
  int64_t max_batch_tokens = 2048;
  // Inter-token latency target for running streams while prompts are prefilled: a step that
  // decodes takes only the prompt tokens its measured cost allows within it (PrefillPacer);
  // zero turns pacing off (prompt chunks up to max_batch_tokens).
  absl::Duration itl_target = absl::Milliseconds(200);
  int64_t max_running_requests = 64;
  // Requests accepted but not yet running; beyond this Submit answers RESOURCE_EXHAUSTED.
  int64_t max_queued_requests = 256;
  // KV cache budget in bytes, accounted in blocks of kv_block_tokens tokens.
  int64_t kv_cache_bytes = int64_t{1} << 30;
  int64_t kv_block_tokens = 16;
  // Keep full blocks of prompt KV after requests end and reuse them for prompts that start with
  // the same tokens under the same base and variant (kv_block_allocator.h).
  bool prefix_caching = true;
  // Global prefix sharing in admission (scheduler.h): sharers of a cached or in-flight prefix
  // go together.
  bool prefix_grouping = true;
  // Names the base model in prefix cache keys (model::ModelFingerprint; any stable string).
  std::string base_fingerprint;
  // max_tokens when a request leaves it 0, and the largest max_tokens accepted.
  int32_t default_max_tokens = 256;
  int32_t max_tokens_limit = 4096;
  // Adapter cache budgets: deltas ready on the model's device, and evicted ones kept in host
  // memory (beyond that they are re-read from disk).
  int64_t adapter_cache_bytes = int64_t{1} << 30;
  int64_t adapter_host_cache_bytes = int64_t{4} << 30;
  // Reads an adapter directory into host memory; empty = deltas::ReadPeftAdapter. Tests replace it.
  AdapterReader read_adapter;
  // Limits on stop strings per request.
  int32_t max_stop_strings = 16;
  // Sequences one request may ask for (SamplingOptions::n).
  int32_t max_choices = 16;
  int32_t max_stop_string_bytes = 256;
  // Intra-op CPU threads of the engine's steps; 0 = one per CPU core (see intra_op_threads.h).
  int32_t threads = 0;
  // What the engine and its adapter cache read the time from (arrival, deadlines, step and
  // load timing); null = common::RealClock(). Tests pass a ManualClock. Must outlive the engine.
  common::Clock* clock = nullptr;

  absl::Status Validate() const;
};

}  // namespace deltaserve::engine
