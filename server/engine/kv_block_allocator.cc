#include "server/engine/kv_block_allocator.h"

#include <algorithm>
#include <cstddef>

namespace deltaserve::engine {
namespace {

// Mix: splitmix64's finalizer, applied after each step of the chain.
uint64_t Mix(uint64_t value) {
  value ^= value >> 30;
  value *= 0xbf58476d1ce4e5b9ULL;
  value ^= value >> 27;
  value *= 0x94d049bb133111ebULL;
  value ^= value >> 31;
  return value;
}

}  // namespace

uint64_t PrefixSalt(std::string_view base_fingerprint, uint64_t variant_id) {
  uint64_t salt = 0x6a09e667f3bcc908ULL;
  for (char c : base_fingerprint) salt = Mix(salt + static_cast<unsigned char>(c));
  return Mix(salt ^ Mix(variant_id + 1));
}

std::vector<uint64_t> PrefixKeys(uint64_t salt, const std::vector<int32_t>& tokens, int64_t block_tokens) {
  std::vector<uint64_t> keys;
  const int64_t blocks = static_cast<int64_t>(tokens.size()) / block_tokens;
  keys.reserve(static_cast<size_t>(blocks));
  uint64_t key = Mix(salt ^ 0x9e3779b97f4a7c15ULL);
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t i = 0; i < block_tokens; ++i) {
      key = Mix(key + static_cast<uint32_t>(tokens[static_cast<size_t>(block * block_tokens + i)]) + 1);
    }
    keys.push_back(key);
  }
  return keys;
}

KvBlockAllocator::KvBlockAllocator(int64_t total_blocks, int64_t block_tokens, bool prefix_caching)
    : total_blocks_(total_blocks), block_tokens_(block_tokens), prefix_caching_(prefix_caching),
      refs_(static_cast<size_t>(total_blocks), 0) {
  // Lowest ids first: a lightly loaded engine touches only the start of the arena.
  free_.reserve(static_cast<size_t>(total_blocks));
  for (int64_t id = total_blocks - 1; id >= 0; --id) free_.push_back(static_cast<int32_t>(id));
}

bool KvBlockAllocator::TryAppend(int64_t blocks, std::vector<int32_t>& table) {
  if (blocks > AvailableBlocks()) return false;
  for (int64_t i = 0; i < blocks; ++i) {
    if (free_.empty()) Forget(lru_.front());  // evict the least recently released cached block
    const int32_t block = free_.back();
    free_.pop_back();
    refs_[static_cast<size_t>(block)] = 1;
    table.push_back(block);
  }
  return true;
}

void KvBlockAllocator::Release(std::vector<int32_t>& table) {
  // Last blocks first: their prefixes are the least likely to be asked for again.
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    const int32_t block = *it;
    if (--refs_[static_cast<size_t>(block)] > 0) continue;
    auto cached = cached_.find(block);
    if (cached != cached_.end()) {
      cached->second.lru = lru_.insert(lru_.end(), block);
    } else {
      free_.push_back(block);
    }
  }
  table.clear();
}

std::vector<int32_t> KvBlockAllocator::Match(uint64_t salt, const std::vector<uint64_t>& keys,
                                             const int32_t* tokens, int64_t max_blocks) const {
  std::vector<int32_t> blocks;
  if (!prefix_caching_) return blocks;
  const int64_t limit = std::min<int64_t>(max_blocks, static_cast<int64_t>(keys.size()));
  for (int64_t i = 0; i < limit; ++i) {
    auto found = by_key_.find(keys[static_cast<size_t>(i)]);
    if (found == by_key_.end()) break;
    const Cached& cached = cached_.at(found->second);
    const int32_t* expected = tokens + i * block_tokens_;
    if (cached.salt != salt || !std::equal(cached.tokens.begin(), cached.tokens.end(), expected)) break;
    blocks.push_back(found->second);
  }
  return blocks;
}

int64_t KvBlockAllocator::Unreferenced(const std::vector<int32_t>& blocks) const {
  return std::count_if(blocks.begin(), blocks.end(),
                       [this](int32_t block) { return refs_[static_cast<size_t>(block)] == 0; });
}

void KvBlockAllocator::Share(const std::vector<int32_t>& blocks, std::vector<int32_t>& table) {
  for (int32_t block : blocks) {
    if (refs_[static_cast<size_t>(block)]++ == 0) lru_.erase(cached_.at(block).lru);
    table.push_back(block);
  }
}

void KvBlockAllocator::Register(int32_t block, uint64_t salt, uint64_t key, const int32_t* tokens) {
  if (!prefix_caching_ || by_key_.count(key) > 0 || cached_.count(block) > 0) return;
  Cached& cached = cached_[block];
  cached.salt = salt;
  cached.key = key;
  cached.tokens.assign(tokens, tokens + block_tokens_);
  by_key_[key] = block;
}

void KvBlockAllocator::Forget(int32_t block) {
  auto cached = cached_.find(block);
  by_key_.erase(cached->second.key);
  if (refs_[static_cast<size_t>(block)] == 0) {
    lru_.erase(cached->second.lru);
    free_.push_back(block);
  }
  cached_.erase(cached);
}

void KvBlockAllocator::DropSalt(uint64_t salt) {
  std::vector<int32_t> dropped;
  for (const auto& [block, cached] : cached_) {
    if (cached.salt == salt) dropped.push_back(block);
  }
  for (int32_t block : dropped) Forget(block);
}

void KvBlockAllocator::DropAll() {
  std::vector<int32_t> dropped;
  for (const auto& [block, cached] : cached_) dropped.push_back(block);
  for (int32_t block : dropped) Forget(block);
}

}  // namespace deltaserve::engine
