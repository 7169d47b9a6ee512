// KvBlockAllocator: which blocks of the KV arena (model/kv_arena.h) are free, which are held by
// sequences' block tables, and which hold a cached prompt prefix. The arena is allocated once for
// --kv-cache-bytes; a request grows by taking blocks here and never reallocates or copies its KV.
//
// Prefix cache (when enabled): a full block of prompt KV can be Registered under a key that chains
// the block's token ids with the key of the block before it, the first block's with a salt naming
// what computed them (base model, variant id). Registered blocks stay after their sequences release
// them; a later sequence whose prompt yields the same keys Shares them (reference counts keep them
// alive). Blocks nobody references are evicted least recently released first, and only when
// TryAppend finds no never-cached free block, so the cache never causes a refusal: AvailableBlocks
// counts them as free. Blocks are verified by their tokens and salt, not by the key alone.
// Engine-thread only (not thread-safe).
//   std::vector<uint64_t> keys = PrefixKeys(salt, tokens, allocator.block_tokens());
//   std::vector<int32_t> hit = allocator.Match(salt, keys, tokens.data(), max_blocks);
//   allocator.Share(hit, table); allocator.TryAppend(more, table); ... allocator.Release(table);
#pragma once

#include <cstdint>
#include <list>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace deltaserve::engine {

// PrefixSalt names what computes a request's KV: the base model (its fingerprint) and the variant
// (an adapter id, never reused by the AdapterCache; 0 for the base).
uint64_t PrefixSalt(std::string_view base_fingerprint, uint64_t variant_id);
// PrefixKeys: the chained key of each full block of `tokens` (block_tokens tokens per block).
std::vector<uint64_t> PrefixKeys(uint64_t salt, const std::vector<int32_t>& tokens, int64_t block_tokens);

class KvBlockAllocator {
 public:
  KvBlockAllocator(int64_t total_blocks, int64_t block_tokens, bool prefix_caching = false);

  // BlocksFor returns how many blocks hold `tokens` tokens.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_tokens_ - 1) / block_tokens_; }
  // TryAppend adds `blocks` blocks to the end of `table` if that many are available, evicting
  // unreferenced cached blocks when no other is free (false, and `table` unchanged, otherwise).
  bool TryAppend(int64_t blocks, std::vector<int32_t>& table);
  // Release drops `table`'s references to its blocks and empties it.
  void Release(std::vector<int32_t>& table);

  // Match: the cached blocks of keys[0], keys[1], ... in order, stopping at the first miss, at
  // most max_blocks; each verified to hold tokens[i*block_tokens ..] under `salt`. Takes nothing.
  std::vector<int32_t> Match(uint64_t salt, const std::vector<uint64_t>& keys, const int32_t* tokens,
                             int64_t max_blocks) const;
  // Unreferenced: how many of `blocks` no table references (taking them lowers AvailableBlocks).
  int64_t Unreferenced(const std::vector<int32_t>& blocks) const;
  // Share appends `blocks` (from Match) to `table`, referencing each.
  void Share(const std::vector<int32_t>& blocks, std::vector<int32_t>& table);
  // Register caches full block `block` (referenced by the caller) as the one of `key`, holding
  // `tokens` (block_tokens of them) under `salt`. A key already cached keeps its block.
  void Register(int32_t block, uint64_t salt, uint64_t key, const int32_t* tokens);
  // DropSalt forgets every cached block computed under `salt` (a variant that is gone); DropAll
  // forgets every cached block. Referenced blocks stay with their tables, uncached.
  void DropSalt(uint64_t salt);
  void DropAll();

  bool prefix_caching() const { return prefix_caching_; }
  // Blocks TryAppend can hand out: free ones plus unreferenced cached ones.
  int64_t AvailableBlocks() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  // Blocks referenced by block tables (cached ones among them included).
  int64_t used_blocks() const { return total_blocks_ - AvailableBlocks(); }
  // Blocks holding a cached prefix, referenced or not.
  int64_t cached_blocks() const { return static_cast<int64_t>(by_key_.size()); }
  int64_t total_blocks() const { return total_blocks_; }
  int64_t block_tokens() const { return block_tokens_; }
  double UsageRatio() const {
    return total_blocks_ == 0 ? 0.0 : static_cast<double>(used_blocks()) / total_blocks_;
  }

 private:
  struct Cached {
    uint64_t salt = 0;
    uint64_t key = 0;
    std::vector<int32_t> tokens;
    std::list<int32_t>::iterator lru;  // valid while unreferenced
  };
  void Forget(int32_t block);

  int64_t total_blocks_;
  int64_t block_tokens_;
  bool prefix_caching_;
  std::vector<int32_t> free_;     // never-cached free blocks; the next one handed out is at the back
  std::vector<int32_t> refs_;     // references by block tables, per block
  std::list<int32_t> lru_;        // unreferenced cached blocks, least recently released first
  std::unordered_map<int32_t, Cached> cached_;    // by block
  std::unordered_map<uint64_t, int32_t> by_key_;  // block of each cached key
};

}  // namespace deltaserve::engine
