// Test helper: KV memory for a few sequences run through LlamaModel::Forward by hand.
//   TestKv kv = MakeTestKv(*model, /*sequences=*/2, /*capacity=*/16);
//   batch.kv_arena = &kv.arena;
//   batch.sequences.push_back({0, length, &kv.tables[0]});
// Each sequence's blocks are scattered through the arena (reversed and interleaved with the
// other sequences'), so that every read and write goes through its block table.
#pragma once

#include <cstdint>
#include <vector>

#include "server/model/llama_model.h"

namespace deltaserve::testing {

struct TestKv {
  model::KvArena arena;
  std::vector<std::vector<int32_t>> tables;
};

inline TestKv MakeTestKv(const model::LlamaModel& model, int64_t sequences, int64_t capacity,
                         int64_t block_tokens = 4) {
  const int64_t per_sequence = (capacity + block_tokens - 1) / block_tokens;
  const int64_t total = sequences * per_sequence;
  TestKv kv{model.AllocateKvArena(total, block_tokens), std::vector<std::vector<int32_t>>(sequences)};
  for (int64_t s = 0; s < sequences; ++s) {
    for (int64_t b = 0; b < per_sequence; ++b) {
      kv.tables[s].push_back(static_cast<int32_t>(total - 1 - (b * sequences + s)));
    }
  }
  return kv;
}

}  // namespace deltaserve::testing
