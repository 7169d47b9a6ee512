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

// One KV head of one sequence and the `group` query heads that share it.
struct AttentionGroup {
  const float* q;  // the group's first query head; heads q_stride apart
  int64_t q_stride;
  const float* k;  // [context, head_dim], rows k_stride apart
  int64_t k_stride;
  const float* v;  // [context, head_dim], rows v_stride apart
  int64_t v_stride;
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
    const float* kt = a.k + t * a.k_stride;
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
    float* row = scores + g * a.context;
    const float highest = *std::max_element(row, row + a.context);
    float total = 0;
    for (int64_t t = 0; t < a.context; ++t) {
      row[t] = std::exp(row[t] - highest);
      total += row[t];
    }
    const float inverse = 1.0f / total;
    for (int64_t t = 0; t < a.context; ++t) row[t] *= inverse;
    std::fill(a.out + g * a.head_dim, a.out + (g + 1) * a.head_dim, 0.0f);
  }
  for (int64_t t = 0; t < a.context; ++t) {
    const float* vt = a.v + t * a.v_stride;
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

at::Tensor AttendDecodeTokens(const at::Tensor& query, const std::vector<at::Tensor>& keys,
                              const std::vector<at::Tensor>& values) {
  const int64_t sequences = query.size(0);
  const int64_t heads = query.size(1);
  const int64_t head_dim = query.size(2);
  TORCH_CHECK(static_cast<int64_t>(keys.size()) == sequences && static_cast<int64_t>(values.size()) == sequences,
              "AttendDecodeTokens: one keys and one values tensor per query token");
  TORCH_CHECK(query.stride(2) == 1, "AttendDecodeTokens: head_dim must be contiguous");
  const int64_t kv_heads = keys[0].size(0);
  const int64_t group = heads / kv_heads;
  int64_t longest = 0;
  for (int64_t s = 0; s < sequences; ++s) {
    TORCH_CHECK(keys[s].stride(2) == 1 && values[s].stride(2) == 1 && keys[s].size(0) == kv_heads &&
                    values[s].size(1) == keys[s].size(1),
                "AttendDecodeTokens: keys and values [kv_heads, context, head_dim], head_dim contiguous");
    longest = std::max(longest, keys[s].size(1));
  }
  at::Tensor output = at::empty({sequences, heads * head_dim}, query.options());
  const float* q = query.data_ptr<float>();
  float* out = output.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  ParallelFor(0, sequences * kv_heads, GrainRows(longest * head_dim * 2 * group), [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(group * longest));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t s = item / kv_heads, kv_head = item % kv_heads;
      const at::Tensor& k = keys[s];
      const at::Tensor& v = values[s];
      AttendGroup({q + s * query.stride(0) + kv_head * group * query.stride(1), query.stride(1),
                   k.data_ptr<float>() + kv_head * k.stride(0), k.stride(1),
                   v.data_ptr<float>() + kv_head * v.stride(0), v.stride(1), k.size(1), head_dim,
                   group, scale, out + s * heads * head_dim + kv_head * group * head_dim},
                  scores.data());
    }
  });
  return output;
}

}  // namespace deltaserve::model::cpu_kernels
