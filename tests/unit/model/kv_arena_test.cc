// KvArena against plain tensors: what Write puts through a scattered block table, Gather returns
// in position order (chunks that start and end inside blocks, the memcpy path for matching
// dtypes and the operator path for a conversion); CopyBlock copies every layer; other blocks
// are left alone.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "server/model/kv_arena.h"

namespace deltaserve::model {
namespace {

constexpr int64_t kLayers = 2, kHeads = 3, kDim = 8, kBlocks = 6, kRows = 4;

TEST(KvArenaTest, GatherReturnsWhatWriteStoredThroughTheTable) {
  for (at::ScalarType arena_dtype : {at::kFloat, at::kBFloat16}) {
    const KvArena arena(kLayers, kHeads, kDim, kBlocks, kRows, at::TensorOptions().dtype(arena_dtype));
    arena.storage().fill_(7.0);
    const std::vector<int32_t> table = {4, 1, 5};  // 12 positions
    const at::Tensor keys = at::randn({11, kHeads, kDim}), values = at::randn({11, kHeads, kDim});
    // Chunks of 3, 2 and 6 positions: starts and ends inside blocks.
    int64_t start = 0;
    for (int64_t length : {3, 2, 6}) {
      for (int64_t layer = 0; layer < kLayers; ++layer) {
        arena.Write(layer, table, start, keys.narrow(0, start, length) * (layer + 1),
                    values.narrow(0, start, length) * (layer + 1));
      }
      start += length;
    }
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      auto [k, v] = arena.Gather(layer, table, 11);
      ASSERT_EQ(k.sizes(), (std::vector<int64_t>{kHeads, 11, kDim}));
      const at::Tensor expected_k = (keys * (layer + 1)).to(arena_dtype).transpose(0, 1);
      const at::Tensor expected_v = (values * (layer + 1)).to(arena_dtype).transpose(0, 1);
      EXPECT_TRUE(at::equal(k, expected_k)) << arena_dtype << " layer " << layer;
      EXPECT_TRUE(at::equal(v, expected_v)) << arena_dtype << " layer " << layer;
    }
    // Blocks outside the table were not written.
    for (int32_t untouched : {0, 2, 3}) {
      EXPECT_TRUE(at::equal(arena.storage().select(2, untouched), at::full_like(arena.storage().select(2, untouched), 7.0)));
    }
  }
}

TEST(KvArenaTest, CopyBlockCopiesEveryLayersKeysAndValues) {
  const KvArena arena(kLayers, kHeads, kDim, kBlocks, kRows, at::TensorOptions().dtype(at::kFloat));
  arena.storage().copy_(at::randn(arena.storage().sizes()));
  const at::Tensor before = arena.storage().clone();
  arena.CopyBlock(2, 5);
  EXPECT_TRUE(at::equal(arena.storage().select(2, 5), before.select(2, 2)));
  for (int32_t other : {0, 1, 2, 3, 4}) EXPECT_TRUE(at::equal(arena.storage().select(2, other), before.select(2, other)));
  EXPECT_EQ(arena.BytesPerBlock(), kLayers * 2 * kHeads * kRows * kDim * 4);
}

TEST(KvArenaTest, RefusesTablesTooShortForTheWrite) {
  const KvArena arena(kLayers, kHeads, kDim, kBlocks, kRows, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor keys = at::randn({5, kHeads, kDim});
  EXPECT_THROW(arena.Write(0, {0}, 0, keys, keys), c10::Error);
  EXPECT_THROW(arena.Write(0, {0, 9}, 0, keys, keys), c10::Error);  // block 9 is outside the arena
}

}  // namespace
}  // namespace deltaserve::model
