#include "server/model/cpu_inference_kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <c10/core/InferenceMode.h>

#include "server/model/worker_team.h"

namespace deltaserve::model::cpu_kernels {
namespace {

// Elements below which a kernel runs on the calling thread alone.
constexpr int64_t kParallelGrainElements = 32768;

int64_t GrainRows(int64_t elements_per_row) {
  return std::max<int64_t>(1, kParallelGrainElements / std::max<int64_t>(1, elements_per_row));
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

at::Tensor AttendOneToken(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values) {
  const int64_t heads = query.size(1);
  const int64_t head_dim = query.size(2);
  const int64_t kv_heads = keys.size(0);
  const int64_t context = keys.size(1);
  const int64_t group = heads / kv_heads;
  TORCH_CHECK(query.stride(2) == 1 && keys.stride(2) == 1 && values.stride(2) == 1,
              "AttendOneToken: head_dim must be contiguous");
  at::Tensor output = at::empty({1, heads * head_dim}, query.options());
  const float* q = query.data_ptr<float>();
  const float* k = keys.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  float* out = output.data_ptr<float>();
  const int64_t q_stride = query.stride(1);
  const int64_t k_head_stride = keys.stride(0), k_stride = keys.stride(1);
  const int64_t v_head_stride = values.stride(0), v_stride = values.stride(1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  ParallelFor(0, heads, GrainRows(context * head_dim * 2), [&](int64_t begin, int64_t end) {
    std::vector<float> scores(context);
    for (int64_t head = begin; head < end; ++head) {
      const float* qh = q + head * q_stride;
      const float* kh = k + (head / group) * k_head_stride;
      const float* vh = v + (head / group) * v_head_stride;
      float highest = -INFINITY;
      for (int64_t t = 0; t < context; ++t) {
        const float* kt = kh + t * k_stride;
        float dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < head_dim; ++i) dot += qh[i] * kt[i];
        scores[t] = dot * scale;
        highest = std::max(highest, scores[t]);
      }
      float total = 0;
      for (int64_t t = 0; t < context; ++t) {
        scores[t] = std::exp(scores[t] - highest);
        total += scores[t];
      }
      float* o = out + head * head_dim;
      std::fill(o, o + head_dim, 0.0f);
      for (int64_t t = 0; t < context; ++t) {
        const float weight = scores[t] / total;
        const float* vt = vh + t * v_stride;
        for (int64_t i = 0; i < head_dim; ++i) o[i] += weight * vt[i];
      }
    }
  });
  return output;
}

}  // namespace deltaserve::model::cpu_kernels
