// KvBlockAllocator: which blocks of the KV arena (model/kv_arena.h) are free, and hands them to
// sequences' block tables. The arena is allocated once for --kv-cache-bytes; a request grows by
// taking blocks here and never reallocates or copies its KV. Engine-thread only (not thread-safe).
#pragma once

#include <cstdint>
#include <vector>

namespace deltaserve::engine {

class KvBlockAllocator {
 public:
  KvBlockAllocator(int64_t total_blocks, int64_t block_tokens);

  // BlocksFor returns how many blocks hold `tokens` tokens.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_tokens_ - 1) / block_tokens_; }
  // TryAppend adds `blocks` free blocks to the end of `table` if that many are free (false, and
  // `table` unchanged, otherwise).
  bool TryAppend(int64_t blocks, std::vector<int32_t>& table);
  // Release returns every block of `table` and empties it.
  void Release(std::vector<int32_t>& table);

  int64_t FreeBlocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_blocks() const { return total_blocks_ - FreeBlocks(); }
  int64_t total_blocks() const { return total_blocks_; }
  int64_t block_tokens() const { return block_tokens_; }
  double UsageRatio() const {
    return total_blocks_ == 0 ? 0.0 : static_cast<double>(used_blocks()) / total_blocks_;
  }

 private:
  int64_t total_blocks_;
  int64_t block_tokens_;
  std::vector<int32_t> free_;  // free block ids; the next one handed out is at the back
};

}  // namespace deltaserve::engine
