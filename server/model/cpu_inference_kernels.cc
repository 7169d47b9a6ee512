#include "server/model/cpu_inference_kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <c10/core/InferenceMode.h>

#include "server/model/cpu_lanes.h"
#include "server/model/worker_team.h"

namespace deltaserve::model::cpu_kernels {
namespace {

// Elements below which a kernel runs on the calling thread alone.
constexpr int64_t kParallelGrainElements = 32768;

int64_t GrainRows(int64_t elements_per_row) {
  return std::max<int64_t>(1, kParallelGrainElements / std::max<int64_t>(1, elements_per_row));
}

// One KV head of one sequence and the `group` query heads that share it. Position t's key is
// row t % block_rows of block blocks[t / block_rows]: k + blocks[...] * block_stride + (t % block_rows) * head_dim
// (values likewise from v).
struct AttentionGroup {
  const float* q;  // the group's first query head; heads q_stride apart
  int64_t q_stride;
  const float* k;  // this KV head's rows in block 0
  const float* v;
  const int32_t* blocks;
  int64_t block_rows, block_stride;
  int64_t context, head_dim, group;
  float scale;
  float* out;  // [group, head_dim] contiguous
};

// softmax(q K^T * scale) V for each query head of the group, reading each key and value row once
// for the whole group; `scores` holds group * context floats.
DELTASERVE_CPU_CLONES
void AttendGroup(const AttentionGroup& a, float* scores) {
  const int64_t vector_end = a.head_dim / kLanes * kLanes;
  for (int64_t t = 0; t < a.context; ++t) {
    const float* kt = a.k + a.blocks[t / a.block_rows] * a.block_stride + (t % a.block_rows) * a.head_dim;
    for (int64_t g = 0; g < a.group; ++g) {
      const float* qg = a.q + g * a.q_stride;
      Lanes sums{};
      for (int64_t i = 0; i < vector_end; i += kLanes) sums += LoadLanes(qg + i) * LoadLanes(kt + i);
      float dot = SumOfLanes(sums);
      for (int64_t i = vector_end; i < a.head_dim; ++i) dot += qg[i] * kt[i];
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
    std::fill(a.out + g * a.head_dim, a.out + (g + 1) * a.head_dim, 0.0f);
  }
  for (int64_t t = 0; t < a.context; ++t) {
    const float* vt = a.v + a.blocks[t / a.block_rows] * a.block_stride + (t % a.block_rows) * a.head_dim;
    for (int64_t g = 0; g < a.group; ++g) {
      const float weight = scores[g * a.context + t];
      float* o = a.out + g * a.head_dim;
      for (int64_t i = 0; i < vector_end; i += kLanes) StoreLanes(o + i, LoadLanes(o + i) + weight * LoadLanes(vt + i));
      for (int64_t i = vector_end; i < a.head_dim; ++i) o[i] += weight * vt[i];
    }
  }
}

}  // namespace

bool Applies(std::initializer_list<const at::Tensor*> tensors) {
  if (!c10::InferenceMode::is_enabled()) return false;
  for (const at::Tensor* tensor : tensors) {
    if (!tensor->defined() || !tensor->device().is_cpu() || tensor->scalar_type() != at::kFloat) return false;
  }
  return true;
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t rows = x.size(0);
  const int64_t hidden = x.size(1);
  at::Tensor input = x.stride(1) == 1 ? x : x.contiguous();
  at::Tensor scale = weight.contiguous();
  at::Tensor output = at::empty({rows, hidden}, x.options());
  const float* in = input.data_ptr<float>();
  const float* w = scale.data_ptr<float>();
  float* out = output.data_ptr<float>();
  const int64_t in_stride = input.stride(0);
  ParallelFor(0, rows, GrainRows(hidden), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* v = in + row * in_stride;
      float* o = out + row * hidden;
      float squares = 0;
#pragma omp simd reduction(+ : squares)
      for (int64_t i = 0; i < hidden; ++i) squares += v[i] * v[i];
      const float inverse = 1.0f / std::sqrt(squares / static_cast<float>(hidden) + static_cast<float>(eps));
      for (int64_t i = 0; i < hidden; ++i) o[i] = v[i] * inverse * w[i];
    }
  });
  return output;
}

void RotateInPlace(at::Tensor& x, int64_t heads, int64_t head_dim, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t tokens = x.size(0);
  const int64_t half = head_dim / 2;
  TORCH_CHECK(x.stride(-1) == 1 && x.size(1) >= heads * head_dim, "RotateInPlace: bad input layout");
  at::Tensor c = cos.contiguous(), s = sin.contiguous();
  float* data = x.data_ptr<float>();
  const int64_t stride = x.stride(0);
  const float* cos_data = c.data_ptr<float>();
  const float* sin_data = s.data_ptr<float>();
  ParallelFor(0, tokens, GrainRows(heads * head_dim), [&](int64_t begin, int64_t end) {
    for (int64_t token = begin; token < end; ++token) {
      const float* ct = cos_data + token * half;
      const float* st = sin_data + token * half;
      for (int64_t head = 0; head < heads; ++head) {
        float* first = data + token * stride + head * head_dim;
        float* second = first + half;
        for (int64_t i = 0; i < half; ++i) {
          const float a = first[i], b = second[i];
          first[i] = a * ct[i] - b * st[i];
          second[i] = b * ct[i] + a * st[i];
        }
      }
    }
  });
}

void AttendRows(const at::Tensor& query, const at::Tensor& kv, const std::vector<QueryRow>& sequences,
                at::Tensor& output) {
  const int64_t heads = query.size(1);
  const int64_t head_dim = query.size(2);
  TORCH_CHECK(query.stride(2) == 1, "AttendRows: head_dim must be contiguous");
  TORCH_CHECK(kv.dim() == 5 && kv.size(0) == 2 && kv.size(4) == head_dim && kv.is_contiguous() &&
                  kv.scalar_type() == at::kFloat,
              "AttendRows: kv must be a contiguous float32 [2, blocks, kv_heads, block_tokens, head_dim]");
  TORCH_CHECK(output.is_contiguous() && output.size(1) == heads * head_dim, "AttendRows: bad output");
  const int64_t blocks = kv.size(1), kv_heads = kv.size(2), block_rows = kv.size(3);
  const int64_t group = heads / kv_heads;
  int64_t longest = 0;
  for (const QueryRow& sequence : sequences) {
    TORCH_CHECK(sequence.context > 0 &&
                    static_cast<int64_t>(sequence.blocks->size()) * block_rows >= sequence.context,
                "AttendRows: the block table is shorter than the context");
    for (int64_t b = 0; b < (sequence.context + block_rows - 1) / block_rows; ++b) {
      TORCH_CHECK((*sequence.blocks)[b] >= 0 && (*sequence.blocks)[b] < blocks, "AttendRows: block ",
                  (*sequence.blocks)[b], " is outside the arena");
    }
    longest = std::max(longest, sequence.context);
  }
  const float* q = query.data_ptr<float>();
  const float* keys = kv.data_ptr<float>();
  const float* values = keys + kv.stride(0);
  float* out = output.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t count = static_cast<int64_t>(sequences.size());
  ParallelFor(0, count * kv_heads, GrainRows(longest * head_dim * 2 * group), [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(group * longest));
    for (int64_t item = begin; item < end; ++item) {
      const QueryRow& sequence = sequences[item / kv_heads];
      const int64_t kv_head = item % kv_heads;
      AttendGroup({q + sequence.row * query.stride(0) + kv_head * group * query.stride(1), query.stride(1),
                   keys + kv_head * kv.stride(2), values + kv_head * kv.stride(2), sequence.blocks->data(),
                   block_rows, kv.stride(1), sequence.context, head_dim, group, scale,
                   out + sequence.row * heads * head_dim + kv_head * group * head_dim},
                  scores.data());
    }
  });
}

}  // namespace deltaserve::model::cpu_kernels
