#include "server/model/kv_arena.h"

#include <algorithm>
#include <cstring>

namespace deltaserve::model {

KvArena::KvArena(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t blocks, int64_t block_tokens,
                 at::TensorOptions options)
    : storage_(at::empty({layers, 2, blocks, kv_heads, block_tokens, head_dim}, options)) {}

int64_t KvArena::BytesPerBlock() const { return storage_.nbytes() / std::max<int64_t>(1, blocks()); }

void KvArena::Write(int64_t layer, const std::vector<int32_t>& table, int64_t start, const at::Tensor& keys,
                    const at::Tensor& values) const {
  const int64_t n = keys.size(0), rows = block_tokens(), heads = kv_heads(), dim = head_dim();
  TORCH_CHECK(keys.dim() == 3 && keys.size(1) == heads && keys.size(2) == dim && values.sizes() == keys.sizes(),
              "KvArena::Write: keys and values must be [n, kv_heads, head_dim]");
  TORCH_CHECK(static_cast<int64_t>(table.size()) * rows >= start + n,
              "KvArena::Write: the block table holds ", table.size() * rows, " positions, not ", start + n);
  const at::Tensor kv = Layer(layer);  // [2, blocks, kv_heads, rows, dim]
  if (storage_.device().is_cpu() && keys.device().is_cpu() && values.device().is_cpu() &&
      keys.scalar_type() == storage_.scalar_type() && values.scalar_type() == storage_.scalar_type() &&
      keys.stride(2) == 1 && values.stride(2) == 1) {
    // One memcpy per position and KV head, without an operator call per block.
    const int64_t element = static_cast<int64_t>(storage_.element_size());
    char* base = static_cast<char*>(kv.data_ptr());
    const int64_t head_bytes = rows * dim * element, block_bytes = heads * head_bytes;
    const int64_t values_offset = blocks() * block_bytes;
    const char* k = static_cast<const char*>(keys.data_ptr());
    const char* v = static_cast<const char*>(values.data_ptr());
    for (int64_t t = 0; t < n; ++t) {
      const int64_t position = start + t;
      const int32_t block = table[position / rows];
      TORCH_CHECK(block >= 0 && block < blocks(), "KvArena::Write: block ", block, " is outside the arena");
      char* row = base + block * block_bytes + (position % rows) * dim * element;
      for (int64_t h = 0; h < heads; ++h) {
        std::memcpy(row + h * head_bytes, k + (t * keys.stride(0) + h * keys.stride(1)) * element, dim * element);
        std::memcpy(row + values_offset + h * head_bytes, v + (t * values.stride(0) + h * values.stride(1)) * element,
                    dim * element);
      }
    }
    return;
  }
  for (int64_t t = 0; t < n;) {
    const int64_t position = start + t, offset = position % rows;
    const int64_t count = std::min(rows - offset, n - t);
    const int64_t block = table[position / rows];
    kv.select(0, 0).select(0, block).narrow(1, offset, count).copy_(keys.narrow(0, t, count).transpose(0, 1));
    kv.select(0, 1).select(0, block).narrow(1, offset, count).copy_(values.narrow(0, t, count).transpose(0, 1));
    t += count;
  }
}

std::pair<at::Tensor, at::Tensor> KvArena::Gather(int64_t layer, const std::vector<int32_t>& table,
                                                  int64_t context) const {
  const int64_t rows = block_tokens(), used = (context + rows - 1) / rows;
  TORCH_CHECK(static_cast<int64_t>(table.size()) >= used, "KvArena::Gather: the block table is too short");
  const at::Tensor ids =
      at::tensor(std::vector<int64_t>(table.begin(), table.begin() + used), at::kLong).to(storage_.device());
  const at::Tensor kv = Layer(layer);
  auto gather = [&](int64_t which) {
    // [used, kv_heads, rows, dim] -> [kv_heads, used * rows, dim], cut to the context.
    return kv.select(0, which).index_select(0, ids).transpose(0, 1).reshape({kv_heads(), used * rows, head_dim()})
        .narrow(1, 0, context);
  };
  return {gather(0), gather(1)};
}

void KvArena::CopyBlock(int32_t from, int32_t to) const {
  storage_.select(2, to).copy_(storage_.select(2, from));
}

}  // namespace deltaserve::model
