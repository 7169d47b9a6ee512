#include "server/engine/kv_block_allocator.h"

#include <cstddef>

namespace deltaserve::engine {

KvBlockAllocator::KvBlockAllocator(int64_t total_blocks, int64_t block_tokens)
    : total_blocks_(total_blocks), block_tokens_(block_tokens) {
  // Lowest ids first: a lightly loaded engine touches only the start of the arena.
  free_.reserve(static_cast<size_t>(total_blocks));
  for (int64_t id = total_blocks - 1; id >= 0; --id) free_.push_back(static_cast<int32_t>(id));
}

bool KvBlockAllocator::TryAppend(int64_t blocks, std::vector<int32_t>& table) {
  if (blocks > FreeBlocks()) return false;
  for (int64_t i = 0; i < blocks; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void KvBlockAllocator::Release(std::vector<int32_t>& table) {
  free_.insert(free_.end(), table.rbegin(), table.rend());
  table.clear();
}

}  // namespace deltaserve::engine
