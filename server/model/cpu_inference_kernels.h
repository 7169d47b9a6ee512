// CPU float32 inference kernels for the forward pass: each does in one operator call, with
// plain loops over raw rows, what the generic path does in several libtorch operators. A batch-1
// decode step runs hundreds of operators on vectors of a few hundred floats, where libtorch's
// per-operator cost (dispatch, allocation, TensorIterator set-up) rivals the arithmetic.
//
// LlamaModel uses them only under c10::InferenceMode on CPU float32 tensors (Applies()); the
// generic operators stay the reference, the path for other devices and dtypes, and the path
// training differentiates through. Results equal the generic path's to float32 rounding.
// Pure functions of their arguments (the in-place ones write only what they are given).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace deltaserve::model::cpu_kernels {

// Applies: inference mode is on and every tensor is a float32 CPU tensor.
bool Applies(std::initializer_list<const at::Tensor*> tensors);

// RmsNorm returns x / sqrt(mean(x^2) + eps) * weight for x [rows, hidden] (rows contiguous).
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// RotateInPlace rotates the first `heads` heads of every row of x [tokens, >= heads * head_dim]
// (rows may be strided, elements contiguous) by cos/sin [tokens, head_dim / 2], in the "rotate
// half" layout.
void RotateInPlace(at::Tensor& x, int64_t heads, int64_t head_dim, const at::Tensor& cos, const at::Tensor& sin);

// One query row for AttendRows: the row of `query` and of `output`, and the keys and values it
// sees: the first `context` positions of its sequence (causal: a prompt token at position p sees
// p + 1 of them).
struct QueryRow {
  int64_t row;
  const std::vector<int32_t>* blocks;  // the sequence's block table in the arena layer
  int64_t context;
};

// AttendRows writes into output [tokens, heads * head_dim] (contiguous rows) the attention of each
// listed query row, query [tokens, heads, head_dim] (any strides with contiguous head_dim), against
// its sequence's keys and values read through its block table from one arena layer `kv`
// [2, blocks, kv_heads, block_tokens, head_dim] (contiguous; kv_arena.h), with grouped-query heads
// sharing KV heads. Decode steps list one row per sequence, prompt chunks one per token. One
// parallel section over (row, KV head) pairs; the query heads of a group read their KV head's keys
// and values once; no score matrix or mask is materialised. Other rows are not touched.
void AttendRows(const at::Tensor& query, const at::Tensor& kv, const std::vector<QueryRow>& rows, at::Tensor& output);

}  // namespace deltaserve::model::cpu_kernels
