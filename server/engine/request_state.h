// RequestState: everything the engine tracks about one admitted request. Owned by the engine
// loop thread; the scheduler reads and updates the scheduling fields. Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include <ATen/ATen.h>

#include "absl/time/time.h"
#include "server/deltas/delta_set.h"
#include "server/engine/choice_fan_in.h"
#include "server/engine/request.h"
#include "server/engine/text_output.h"

namespace deltaserve::engine {

struct RequestState {
  uint64_t id = 0;
  EngineRequest request;
  std::shared_ptr<RequestSink> sink;
  // The adapter's device deltas while the request is in the running set (null for the base).
  std::shared_ptr<const deltas::DeltaSet> deltas;

  // Prompt followed by generated tokens. Tokens [0, computed) have their K/V in the arena blocks
  // of kv_blocks; after a preemption computed drops to 0 and everything is recomputed.
  std::vector<int32_t> tokens;
  int64_t prompt_tokens = 0;
  int64_t computed = 0;
  int64_t max_new_tokens = 0;  // clamped to the context length

  // The request's block table: arena blocks taken from the KvBlockAllocator, in position order.
  std::vector<int32_t> kv_blocks;
  // Prefix cache: the salt naming what computes this request's KV (base model, variant id), the
  // chained key of each full prompt block, how many leading blocks of kv_blocks are registered in
  // the cache (or were shared from it), and how many prompt tokens the last admission found cached.
  uint64_t prefix_salt = 0;
  std::vector<uint64_t> prefix_keys;
  int64_t registered_blocks = 0;
  int64_t cached_tokens = 0;
  // Times a younger request with a longer cached prefix was admitted before this one.
  int passed_over = 0;
  // Order of (re)admission to the running set: larger is younger (preempted first).
  uint64_t admission = 0;
  bool running = false;

  std::mt19937_64 generator;
  uint64_t seed = 0;  // the generator's seed
  // Parallel sampling (n > 1): the choices' shared sink, this sequence's choice index, the id of
  // the request the choices came from (cancelling it cancels them all), and whether the other
  // choices were forked from this one (at the end of its prompt).
  std::shared_ptr<ChoiceFanIn> fan_in;
  int32_t choice_index = 0;
  uint64_t family = 0;
  bool forked = false;
  TextOutput text{{}};
  std::vector<float> score_logprobs;

  absl::Time arrival;
  absl::Time first_scheduled = absl::InfinitePast();
  absl::Time first_token = absl::InfinitePast();
  absl::Time last_token = absl::InfinitePast();

  int64_t GeneratedTokens() const { return static_cast<int64_t>(tokens.size()) - prompt_tokens; }
  // Tokens still to run through the model before the next sample (or the end of scoring).
  int64_t PendingTokens() const { return static_cast<int64_t>(tokens.size()) - computed; }
};

}  // namespace deltaserve::engine
