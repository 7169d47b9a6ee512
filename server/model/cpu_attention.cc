#include "server/model/cpu_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "server/model/cpu_lanes.h"
#include "server/model/worker_team.h"

namespace deltaserve::model::cpu_kernels {
namespace {

// Keys per chunk of the online softmax: the partial output is rescaled once per chunk.
constexpr int64_t kKeyChunk = 32;
// Query vectors a run must fill for the tiles (half of one tile); fewer go row by row.
constexpr int64_t kMinTileVectors = kLanes / 2;
// Work (floats read) below which a section runs on the calling thread alone.
constexpr int64_t kParallelGrainElements = 32768;

// Where the keys and values of one KV head of one sequence are: position t's key is row
// t % block_rows of block blocks[t / block_rows] (values likewise from v).
struct HeadKv {
  const float* k;  // this KV head's rows in block 0
  const float* v;
  const int32_t* blocks;
  int64_t block_rows, block_stride, head_dim;

  const float* Key(int64_t t) const { return k + blocks[t / block_rows] * block_stride + (t % block_rows) * head_dim; }
  const float* Value(int64_t t) const { return v + blocks[t / block_rows] * block_stride + (t % block_rows) * head_dim; }
};

// One KV head for one query row: its `group` query heads and their output.
struct AttentionGroup {
  HeadKv kv;
  const float* q;  // the group's first query head; heads q_stride apart
  int64_t q_stride;
  int64_t context, group;
  float scale;
  float* out;  // [group, head_dim] contiguous
};

// softmax(q K^T * scale) V for each query head of the group, reading each key and value row once
// for the whole group; `scores` holds group * context floats.
DELTASERVE_CPU_CLONES
void AttendGroup(const AttentionGroup& a, float* scores) {
  const int64_t head_dim = a.kv.head_dim;
  const int64_t vector_end = head_dim / kLanes * kLanes;
  for (int64_t t = 0; t < a.context; ++t) {
    const float* kt = a.kv.Key(t);
    for (int64_t g = 0; g < a.group; ++g) {
      const float* qg = a.q + g * a.q_stride;
      Lanes sums{};
      for (int64_t i = 0; i < vector_end; i += kLanes) sums += LoadLanes(qg + i) * LoadLanes(kt + i);
      float dot = SumOfLanes(sums);
      for (int64_t i = vector_end; i < head_dim; ++i) dot += qg[i] * kt[i];
      scores[g * a.context + t] = dot * a.scale;
    }
  }
  for (int64_t g = 0; g < a.group; ++g) {
    float* probabilities = scores + g * a.context;
    const float highest = *std::max_element(probabilities, probabilities + a.context);
    float total = 0;
    for (int64_t t = 0; t < a.context; ++t) {
      probabilities[t] = std::exp(probabilities[t] - highest);
      total += probabilities[t];
    }
    const float inverse = 1.0f / total;
    for (int64_t t = 0; t < a.context; ++t) probabilities[t] *= inverse;
    std::fill(a.out + g * head_dim, a.out + (g + 1) * head_dim, 0.0f);
  }
  for (int64_t t = 0; t < a.context; ++t) {
    const float* vt = a.kv.Value(t);
    for (int64_t g = 0; g < a.group; ++g) {
      const float weight = scores[g * a.context + t];
      float* o = a.out + g * head_dim;
      for (int64_t i = 0; i < vector_end; i += kLanes) StoreLanes(o + i, LoadLanes(o + i) + weight * LoadLanes(vt + i));
      for (int64_t i = vector_end; i < head_dim; ++i) o[i] += weight * vt[i];
    }
  }
}

// Up to kLanes query vectors of one run and one KV head: vector u (0 <= u < run rows * group) is
// query head kv_head * group + u % group of the run's row u / group.
struct PromptTile {
  HeadKv kv;
  const float* q;  // the run's first row, the KV head's first query head
  int64_t q_row_stride, q_head_stride;
  float* out;  // likewise in the output
  int64_t out_row_stride;
  int64_t first_vector, vectors;  // vectors <= kLanes
  int64_t group, first_context;
  float scale;
};

// scores[c] (one lane per query) = transposed queries . key row c, for kKeys keys at once.
template <int kKeys>
__attribute__((always_inline)) inline void ScoreKeys(const float* transposed, const float* const* keys,
                                                     int64_t head_dim, Lanes* scores) {
  Lanes sums[kKeys];
#pragma GCC unroll 8
  for (int c = 0; c < kKeys; ++c) sums[c] = Lanes{};
  for (int64_t i = 0; i < head_dim; ++i) {
    const Lanes query = LoadLanes(transposed + i * kLanes);
#pragma GCC unroll 8
    for (int c = 0; c < kKeys; ++c) sums[c] += keys[c][i] * query;
  }
#pragma GCC unroll 8
  for (int c = 0; c < kKeys; ++c) scores[c] = sums[c];
}

// output lanes (kWidth dimensions from i) += sum over the chunk's keys of value[c][i] * p[c].
template <int kWidth>
__attribute__((always_inline)) inline void AccumulateValues(const float* const* values, const Lanes* p, int64_t keys,
                                                            int64_t i, float* transposed_out) {
  Lanes sums[kWidth];
#pragma GCC unroll 8
  for (int w = 0; w < kWidth; ++w) sums[w] = LoadLanes(transposed_out + (i + w) * kLanes);
  for (int64_t c = 0; c < keys; ++c) {
    const float* value = values[c] + i;
#pragma GCC unroll 8
    for (int w = 0; w < kWidth; ++w) sums[w] += value[w] * p[c];
  }
#pragma GCC unroll 8
  for (int w = 0; w < kWidth; ++w) StoreLanes(transposed_out + (i + w) * kLanes, sums[w]);
}

// The tile's attention with the online softmax; `scratch` holds 2 * head_dim * kLanes floats.
DELTASERVE_CPU_CLONES
void AttendPromptTile(const PromptTile& a, float* scratch) {
  const int64_t head_dim = a.kv.head_dim;
  float* transposed_q = scratch;              // [head_dim][kLanes], scaled
  float* transposed_out = scratch + head_dim * kLanes;  // [head_dim][kLanes]
  float contexts[kLanes];
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    // Lanes past the tile's vectors repeat its first row's context with zero queries.
    const int64_t u = a.first_vector + (lane < a.vectors ? lane : 0);
    const int64_t row = u / a.group;
    contexts[lane] = static_cast<float>(a.first_context + row);
    const float* q = a.q + row * a.q_row_stride + (u % a.group) * a.q_head_stride;
    for (int64_t i = 0; i < head_dim; ++i) transposed_q[i * kLanes + lane] = lane < a.vectors ? q[i] * a.scale : 0.0f;
  }
  std::fill(transposed_out, transposed_out + head_dim * kLanes, 0.0f);
  const Lanes context = LoadLanes(contexts);
  const int64_t fewest = static_cast<int64_t>(contexts[0]);
  const int64_t most = static_cast<int64_t>(contexts[a.vectors - 1]);
  Lanes highest = SplatLanes(-std::numeric_limits<float>::infinity());
  Lanes total{};
  Lanes p[kKeyChunk];
  const float* keys[kKeyChunk];
  const float* values[kKeyChunk];
  for (int64_t t0 = 0; t0 < most; t0 += kKeyChunk) {
    const int64_t count = std::min(kKeyChunk, most - t0);
    for (int64_t c = 0; c < count; ++c) {
      keys[c] = a.kv.Key(t0 + c);
      values[c] = a.kv.Value(t0 + c);
    }
    int64_t c = 0;
    for (; c + 8 <= count; c += 8) ScoreKeys<8>(transposed_q, keys + c, head_dim, p + c);
    for (; c < count; ++c) ScoreKeys<1>(transposed_q, keys + c, head_dim, p + c);
    if (t0 + count > fewest) {  // causal: lane sees positions below its context
      for (c = 0; c < count; ++c) {
        p[c] = SplatLanes(static_cast<float>(t0 + c)) < context ? p[c] : SplatLanes(-std::numeric_limits<float>::infinity());
      }
    }
    Lanes chunk_highest = p[0];
    for (c = 1; c < count; ++c) chunk_highest = MaxLanes(chunk_highest, p[c]);
    const Lanes new_highest = MaxLanes(highest, chunk_highest);
    const Lanes correction = ExpLanes(highest - new_highest);
    highest = new_highest;
    total *= correction;
    for (int64_t i = 0; i < head_dim; ++i) {
      StoreLanes(transposed_out + i * kLanes, LoadLanes(transposed_out + i * kLanes) * correction);
    }
    for (c = 0; c < count; ++c) {
      p[c] = ExpLanes(p[c] - highest);
      total += p[c];
    }
    int64_t i = 0;
    for (; i + 8 <= head_dim; i += 8) AccumulateValues<8>(values, p, count, i, transposed_out);
    for (; i < head_dim; ++i) AccumulateValues<1>(values, p, count, i, transposed_out);
  }
  float inverse[kLanes];
  StoreLanes(inverse, SplatLanes(1.0f) / total);
  for (int64_t lane = 0; lane < a.vectors; ++lane) {
    const int64_t u = a.first_vector + lane;
    float* out = a.out + (u / a.group) * a.out_row_stride + (u % a.group) * head_dim;
    for (int64_t i = 0; i < head_dim; ++i) out[i] = transposed_out[i * kLanes + lane] * inverse[lane];
  }
}

// A tile of the parallel section: run, KV head, index of its first vector.
struct TileItem {
  int64_t run, kv_head, first_vector;
};

}  // namespace

void AttendRuns(AttentionMethod method, const at::Tensor& query, const at::Tensor& kv,
                const std::vector<QueryRun>& runs, at::Tensor& output) {
  const int64_t heads = query.size(1);
  const int64_t head_dim = query.size(2);
  TORCH_CHECK(query.stride(2) == 1 && query.scalar_type() == at::kFloat, "AttendRuns: head_dim must be contiguous float32");
  TORCH_CHECK(kv.dim() == 5 && kv.size(0) == 2 && kv.size(4) == head_dim && kv.is_contiguous() &&
                  kv.scalar_type() == at::kFloat,
              "AttendRuns: kv must be a contiguous float32 [2, blocks, kv_heads, block_tokens, head_dim]");
  TORCH_CHECK(output.is_contiguous() && output.size(1) == heads * head_dim && output.scalar_type() == at::kFloat,
              "AttendRuns: bad output");
  const int64_t blocks = kv.size(1), kv_heads = kv.size(2), block_rows = kv.size(3);
  TORCH_CHECK(heads % kv_heads == 0, "AttendRuns: ", heads, " query heads do not group over ", kv_heads, " KV heads");
  const int64_t group = heads / kv_heads;
  std::vector<AttentionGroup> row_items;  // one per (row, KV head) going row by row
  std::vector<TileItem> tile_items;
  int64_t longest_row = 0;
  const float* q = query.data_ptr<float>();
  const float* keys = kv.data_ptr<float>();
  const float* values = keys + kv.stride(0);
  float* out = output.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (size_t r = 0; r < runs.size(); ++r) {
    const QueryRun& run = runs[r];
    const int64_t context = run.first_context + run.rows - 1;
    TORCH_CHECK(run.rows > 0 && run.first_context > 0 && run.first_row >= 0 && run.first_row + run.rows <= query.size(0) &&
                    static_cast<int64_t>(run.blocks->size()) * block_rows >= context,
                "AttendRuns: a run's rows or block table do not fit its context");
    for (int64_t b = 0; b < (context + block_rows - 1) / block_rows; ++b) {
      TORCH_CHECK((*run.blocks)[b] >= 0 && (*run.blocks)[b] < blocks, "AttendRuns: block ", (*run.blocks)[b],
                  " is outside the arena");
    }
    const int64_t vectors = run.rows * group;
    if (method == AttentionMethod::kByRun && vectors >= kMinTileVectors) {
      // First and last tiles alternate, so that each thread's contiguous share has as many
      // short causal tiles as long ones.
      const int64_t tiles = (vectors + kLanes - 1) / kLanes;
      for (int64_t h = 0; h < kv_heads; ++h) {
        for (int64_t low = 0, high = tiles - 1; low <= high; ++low, --high) {
          tile_items.push_back({static_cast<int64_t>(r), h, low * kLanes});
          if (high != low) tile_items.push_back({static_cast<int64_t>(r), h, high * kLanes});
        }
      }
      continue;
    }
    for (int64_t i = 0; i < run.rows; ++i) {
      const int64_t row = run.first_row + i;
      for (int64_t h = 0; h < kv_heads; ++h) {
        row_items.push_back({{keys + h * kv.stride(2), values + h * kv.stride(2), run.blocks->data(), block_rows,
                              kv.stride(1), head_dim},
                             q + row * query.stride(0) + h * group * query.stride(1),
                             query.stride(1),
                             run.first_context + i,
                             group,
                             scale,
                             out + row * heads * head_dim + h * group * head_dim});
      }
      longest_row = std::max(longest_row, run.first_context + i);
    }
  }
  if (!row_items.empty()) {
    const int64_t grain = std::max<int64_t>(1, kParallelGrainElements / std::max<int64_t>(1, longest_row * head_dim * 2 * group));
    ParallelFor(0, static_cast<int64_t>(row_items.size()), grain, [&](int64_t begin, int64_t end) {
      std::vector<float> scores(static_cast<size_t>(group * longest_row));
      for (int64_t item = begin; item < end; ++item) AttendGroup(row_items[item], scores.data());
    });
  }
  if (!tile_items.empty()) {
    ParallelFor(0, static_cast<int64_t>(tile_items.size()), 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(static_cast<size_t>(2 * head_dim * kLanes));
      for (int64_t item = begin; item < end; ++item) {
        const TileItem& tile = tile_items[item];
        const QueryRun& run = runs[tile.run];
        const int64_t first_head = tile.kv_head * group;
        AttendPromptTile({{keys + tile.kv_head * kv.stride(2), values + tile.kv_head * kv.stride(2), run.blocks->data(),
                           block_rows, kv.stride(1), head_dim},
                          q + run.first_row * query.stride(0) + first_head * query.stride(1),
                          query.stride(0),
                          query.stride(1),
                          out + run.first_row * heads * head_dim + first_head * head_dim,
                          heads * head_dim,
                          tile.first_vector,
                          std::min<int64_t>(kLanes, run.rows * group - tile.first_vector),
                          group,
                          run.first_context,
                          scale},
                         scratch.data());
      }
    });
  }
}

void AttendRuns(const at::Tensor& query, const at::Tensor& kv, const std::vector<QueryRun>& runs, at::Tensor& output) {
  AttendRuns(AttentionMethod::kByRun, query, kv, runs, output);
}

}  // namespace deltaserve::model::cpu_kernels
