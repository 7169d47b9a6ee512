// KvBlockAllocator's prefix cache, block by block: keys chain tokens and salt, a match stops at
// the first miss and is verified by tokens, shared blocks live while referenced, unreferenced
// cached blocks are evicted least recently released first and only when nothing else is free,
// dropping a salt or everything frees what nobody holds, and every block is accounted for.
#include <gtest/gtest.h>

#include <numeric>

#include "server/engine/kv_block_allocator.h"

namespace deltaserve::engine {
namespace {

constexpr int64_t kBlockTokens = 4;

std::vector<int32_t> Tokens(int count, int32_t first = 1) {
  std::vector<int32_t> tokens(static_cast<size_t>(count));
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

// Takes blocks for `tokens` and registers its full blocks, as the engine does after a prefill.
std::vector<int32_t> Compute(KvBlockAllocator& allocator, uint64_t salt, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> table;
  EXPECT_TRUE(allocator.TryAppend(allocator.BlocksFor(static_cast<int64_t>(tokens.size())), table));
  const std::vector<uint64_t> keys = PrefixKeys(salt, tokens, kBlockTokens);
  for (size_t i = 0; i < keys.size(); ++i) {
    allocator.Register(table[i], salt, keys[i], tokens.data() + i * kBlockTokens);
  }
  return table;
}

TEST(PrefixKeysTest, ChainTheTokensOfEveryEarlierBlockAndTheSalt) {
  const std::vector<int32_t> a = Tokens(10);
  std::vector<int32_t> b = a;
  b[1] = 99;  // first block differs: every later key differs too
  std::vector<int32_t> c = a;
  c[5] = 99;  // second block differs: the first key stays
  const auto ka = PrefixKeys(7, a, kBlockTokens);
  ASSERT_EQ(ka.size(), 2u);  // the partial third block has no key
  const auto kb = PrefixKeys(7, b, kBlockTokens);
  const auto kc = PrefixKeys(7, c, kBlockTokens);
  EXPECT_NE(ka[0], kb[0]);
  EXPECT_NE(ka[1], kb[1]);
  EXPECT_EQ(ka[0], kc[0]);
  EXPECT_NE(ka[1], kc[1]);
  EXPECT_NE(PrefixKeys(8, a, kBlockTokens)[0], ka[0]);
  EXPECT_NE(PrefixSalt("base", 0), PrefixSalt("base", 1));
  EXPECT_NE(PrefixSalt("base", 1), PrefixSalt("other", 1));
}

TEST(KvBlockAllocatorTest, SharesTheLongestVerifiedPrefixAndKeepsSharedBlocksAlive) {
  KvBlockAllocator allocator(8, kBlockTokens, /*prefix_caching=*/true);
  const uint64_t salt = PrefixSalt("base", 0);
  const std::vector<int32_t> prompt = Tokens(10);  // two full blocks and a partial one
  std::vector<int32_t> first = Compute(allocator, salt, prompt);
  EXPECT_EQ(allocator.cached_blocks(), 2);

  std::vector<int32_t> diverging = prompt;
  diverging[6] = 50;  // mid second block
  const auto keys = PrefixKeys(salt, diverging, kBlockTokens);
  std::vector<int32_t> hit = allocator.Match(salt, keys, diverging.data(), 10);
  ASSERT_EQ(hit.size(), 1u);
  EXPECT_EQ(hit[0], first[0]);
  // Another salt (another variant) finds nothing for the same tokens.
  EXPECT_TRUE(allocator.Match(PrefixSalt("base", 3), PrefixKeys(PrefixSalt("base", 3), prompt, kBlockTokens),
                              prompt.data(), 10).empty());
  // max_blocks bounds the match.
  EXPECT_EQ(allocator.Match(salt, PrefixKeys(salt, prompt, kBlockTokens), prompt.data(), 1).size(), 1u);

  std::vector<int32_t> second;
  EXPECT_EQ(allocator.Unreferenced(hit), 0);  // `first` still holds it
  allocator.Share(hit, second);
  allocator.Release(first);  // the shared block stays with `second`
  EXPECT_EQ(allocator.used_blocks(), 1);
  EXPECT_EQ(allocator.cached_blocks(), 2);
  EXPECT_EQ(allocator.AvailableBlocks(), 7);  // free plus the unreferenced cached block
  // Exhausting the arena evicts the unreferenced cached block but never the shared one.
  std::vector<int32_t> filler;
  ASSERT_TRUE(allocator.TryAppend(7, filler));
  EXPECT_EQ(allocator.cached_blocks(), 1);
  EXPECT_FALSE(allocator.TryAppend(1, filler));
  EXPECT_EQ(allocator.Match(salt, keys, diverging.data(), 10), hit);
  allocator.Release(filler);
  allocator.Release(second);
  EXPECT_EQ(allocator.used_blocks(), 0);
  EXPECT_EQ(allocator.cached_blocks(), 1);
  EXPECT_EQ(allocator.AvailableBlocks(), 8);
}

TEST(KvBlockAllocatorTest, EvictsTheDeepestLeastRecentlyReleasedBlocksFirst) {
  KvBlockAllocator allocator(6, kBlockTokens, true);
  const uint64_t salt = 1;
  const std::vector<int32_t> old_prompt = Tokens(12, 1);
  const std::vector<int32_t> new_prompt = Tokens(8, 100);
  std::vector<int32_t> table = Compute(allocator, salt, old_prompt);
  allocator.Release(table);
  table = Compute(allocator, salt, new_prompt);
  allocator.Release(table);
  EXPECT_EQ(allocator.cached_blocks(), 5);
  std::vector<int32_t> taken;
  ASSERT_TRUE(allocator.TryAppend(2, taken));  // the free block, then the old prompt's last block
  const auto old_keys = PrefixKeys(salt, old_prompt, kBlockTokens);
  EXPECT_EQ(allocator.Match(salt, old_keys, old_prompt.data(), 3).size(), 2u);
  EXPECT_EQ(allocator.Match(salt, PrefixKeys(salt, new_prompt, kBlockTokens), new_prompt.data(), 2).size(), 2u);
  allocator.Release(taken);
}

TEST(KvBlockAllocatorTest, DroppingASaltOrEverythingFreesWhatNobodyHolds) {
  KvBlockAllocator allocator(8, kBlockTokens, true);
  const std::vector<int32_t> prompt = Tokens(8);
  std::vector<int32_t> base = Compute(allocator, 10, prompt);
  std::vector<int32_t> variant = Compute(allocator, 20, prompt);
  EXPECT_EQ(allocator.cached_blocks(), 4);
  allocator.Release(base);
  allocator.DropSalt(10);  // unreferenced: freed
  allocator.DropSalt(20);  // referenced: uncached, still held
  EXPECT_EQ(allocator.cached_blocks(), 0);
  EXPECT_EQ(allocator.used_blocks(), 2);
  EXPECT_TRUE(allocator.Match(20, PrefixKeys(20, prompt, kBlockTokens), prompt.data(), 2).empty());
  allocator.Release(variant);
  EXPECT_EQ(allocator.used_blocks(), 0);
  EXPECT_EQ(allocator.AvailableBlocks(), 8);

  std::vector<int32_t> again = Compute(allocator, 10, prompt);
  allocator.Release(again);
  EXPECT_EQ(allocator.cached_blocks(), 2);
  allocator.DropAll();
  EXPECT_EQ(allocator.cached_blocks(), 0);
  EXPECT_EQ(allocator.AvailableBlocks(), 8);
  // Every block can still be taken exactly once.
  std::vector<int32_t> all;
  ASSERT_TRUE(allocator.TryAppend(8, all));
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, Tokens(8, 0));
}

TEST(KvBlockAllocatorTest, WithoutPrefixCachingNothingIsRegisteredOrMatched) {
  KvBlockAllocator allocator(4, kBlockTokens, false);
  const std::vector<int32_t> prompt = Tokens(8);
  std::vector<int32_t> table = Compute(allocator, 1, prompt);
  allocator.Release(table);
  EXPECT_EQ(allocator.cached_blocks(), 0);
  EXPECT_TRUE(allocator.Match(1, PrefixKeys(1, prompt, kBlockTokens), prompt.data(), 2).empty());
  EXPECT_EQ(allocator.AvailableBlocks(), 4);
}

}  // namespace
}  // namespace deltaserve::engine
