// KvBlockAllocator: byte-budget accounting of the KV cache in fixed-size blocks of tokens.
// The engine never allocates KV memory for a sequence without reserving its blocks here, so
// KV memory stays within --kv-cache-bytes. Engine-thread only (not thread-safe).
#pragma once

#include <cstdint>

namespace deltaserve::engine {

class KvBlockAllocator {
 public:
  KvBlockAllocator(int64_t total_blocks, int64_t block_tokens)
      : total_blocks_(total_blocks), block_tokens_(block_tokens) {}

  // BlocksFor returns how many blocks hold `tokens` tokens.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_tokens_ - 1) / block_tokens_; }
  // TryReserve takes `blocks` more blocks if they are free.
  bool TryReserve(int64_t blocks) {
    if (blocks > FreeBlocks()) return false;
    used_blocks_ += blocks;
    return true;
  }
  void Release(int64_t blocks) { used_blocks_ -= blocks; }

  int64_t FreeBlocks() const { return total_blocks_ - used_blocks_; }
  int64_t used_blocks() const { return used_blocks_; }
  int64_t total_blocks() const { return total_blocks_; }
  int64_t block_tokens() const { return block_tokens_; }
  double UsageRatio() const {
    return total_blocks_ == 0 ? 0.0 : static_cast<double>(used_blocks_) / total_blocks_;
  }

 private:
  int64_t total_blocks_;
  int64_t block_tokens_;
  int64_t used_blocks_ = 0;  // invariant: 0 <= used_blocks_ <= total_blocks_
};

}  // namespace deltaserve::engine
