// KvArena: the key/value cache of every sequence, one allocation of fixed-size blocks made once
// (the engine sizes it from --kv-cache-bytes). A sequence owns a block table: block ids, one per
// block_tokens positions; position p of the sequence lives in block table[p / block_tokens], row
// p % block_tokens. Sequences never grow by reallocating or copying: they take more blocks. Who
// owns which block is the caller's business (engine/kv_block_allocator.h); the arena only holds
// the memory and reads and writes through tables.
//
// Layout: storage [layers, 2 (keys, values), blocks, kv_heads, block_tokens, head_dim] in the
// compute dtype on the model's device, so that one layer's keys of one block and KV head are one
// contiguous [block_tokens, head_dim] run. Not thread-safe: one writer per block at a time.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace deltaserve::model {

class KvArena {
 public:
  KvArena() = default;
  // Uninitialised memory for `blocks` blocks of `block_tokens` positions.
  KvArena(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t blocks, int64_t block_tokens,
          at::TensorOptions options);

  bool defined() const { return storage_.defined(); }
  int64_t blocks() const { return storage_.size(2); }
  int64_t block_tokens() const { return storage_.size(4); }
  int64_t kv_heads() const { return storage_.size(3); }
  int64_t head_dim() const { return storage_.size(5); }
  int64_t BytesPerBlock() const;
  // Layer returns [2, blocks, kv_heads, block_tokens, head_dim], a view.
  at::Tensor Layer(int64_t layer) const { return storage_.select(0, layer); }
  const at::Tensor& storage() const { return storage_; }

  // Write stores keys and values [n, kv_heads, head_dim] of positions [start, start + n) of the
  // sequence with block table `table` into layer `layer`.
  void Write(int64_t layer, const std::vector<int32_t>& table, int64_t start, const at::Tensor& keys,
             const at::Tensor& values) const;
  // Gather returns the first `context` positions' keys and values of layer `layer` as two
  // contiguous [kv_heads, context, head_dim] tensors (copies).
  std::pair<at::Tensor, at::Tensor> Gather(int64_t layer, const std::vector<int32_t>& table, int64_t context) const;
  // CopyBlock copies every layer's keys and values of block `from` into block `to`.
  void CopyBlock(int32_t from, int32_t to) const;

 private:
  at::Tensor storage_;
};

}  // namespace deltaserve::model
