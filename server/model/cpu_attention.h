// CPU float32 attention over the KV arena (kv_arena.h): each query row attends to its sequence's
// keys and values read through the sequence's block table, causally, with grouped-query heads
// sharing KV heads; no score matrix or mask is materialised and nothing is gathered.
//
// Two kernels, chosen per run of query rows:
//  - rows of a prompt chunk (a run of consecutive positions of one sequence) go in tiles of 16
//    query vectors (row, head) of one KV head, transposed so that each lane is one query: each key
//    and value row is read once per tile and broadcast against the 16 queries (outer products, no
//    horizontal sums), with the softmax computed online over chunks of keys (the running maximum
//    and sum per lane, the partial output rescaled when the maximum grows). The tiles of a run
//    are interleaved first/last across the threads, so that their causal lengths balance.
//  - a decode row (or a run too short to fill half a tile) takes one KV head and its query
//    heads at a time, one dot product per key, and reads each key and value once for the group.
// One parallel section per kernel. Used by LlamaModel under inference mode on the CPU (see
// cpu_inference_kernels.h for when). Results equal softmax(q K^T / sqrt(head_dim)) V to float32
// rounding. Pure function of its arguments; writes only the listed rows of `output`.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace deltaserve::model::cpu_kernels {

// Rows first_row .. first_row + rows - 1 of `query` and `output`, consecutive positions of one
// sequence: row first_row + i sees the first first_context + i positions of the sequence (a
// decode step is one row; a prompt chunk starting at position p is its length in rows with
// first_context p + 1).
struct QueryRun {
  int64_t first_row;
  int64_t rows;
  const std::vector<int32_t>* blocks;  // the sequence's block table in the arena layer
  int64_t first_context;
};

// AttendRuns writes into output [tokens, heads * head_dim] (contiguous rows) the attention of the
// rows of every run, query [tokens, heads, head_dim] (any strides with contiguous head_dim),
// against one arena layer `kv` [2, blocks, kv_heads, block_tokens, head_dim] (contiguous).
void AttendRuns(const at::Tensor& query, const at::Tensor& kv, const std::vector<QueryRun>& runs, at::Tensor& output);

// The same with the prompt tiles on or off (tests compare both on every shape).
enum class AttentionMethod { kByRun, kRowByRow };
void AttendRuns(AttentionMethod method, const at::Tensor& query, const at::Tensor& kv,
                const std::vector<QueryRun>& runs, at::Tensor& output);

}  // namespace deltaserve::model::cpu_kernels
