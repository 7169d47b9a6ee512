#include "server/model/cpu_inference_kernels.h"

#include <algorithm>
#include <cmath>

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

DELTASERVE_CPU_CLONES
void AddRows(const float* x, const float* y, float* out, int64_t width) {
  int64_t i = 0;
  for (; i + kLanes <= width; i += kLanes) StoreLanes(out + i, LoadLanes(x + i) + LoadLanes(y + i));
  for (; i < width; ++i) out[i] = x[i] + y[i];
}

DELTASERVE_CPU_CLONES
void SiluTimesRow(const float* gate, const float* up, float* out, int64_t width) {
  int64_t i = 0;
  for (; i + kLanes <= width; i += kLanes) {
    const Lanes g = LoadLanes(gate + i);
    StoreLanes(out + i, g / (1.0f + ExpLanes(-g)) * LoadLanes(up + i));
  }
  for (; i < width; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// out = row(x, y) row by row for x and y [rows, width] (rows may be strided, elements
// contiguous), into a new contiguous tensor; rows split over the worker team.
at::Tensor CombineRows(const char* name, const at::Tensor& x, const at::Tensor& y,
                       void (*row)(const float*, const float*, float*, int64_t)) {
  TORCH_CHECK(x.dim() == 2 && x.sizes() == y.sizes() && x.stride(1) == 1 && y.stride(1) == 1 && Applies({&x, &y}),
              name, ": both operands must be float32 CPU [rows, width] with contiguous elements, under inference mode");
  const int64_t width = x.size(1);
  at::Tensor output = at::empty(x.sizes(), x.options());
  const float* a = x.data_ptr<float>();
  const float* b = y.data_ptr<float>();
  float* out = output.data_ptr<float>();
  const int64_t a_stride = x.stride(0), b_stride = y.stride(0);
  ParallelFor(0, x.size(0), GrainRows(width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row(a + r * a_stride, b + r * b_stride, out + r * width, width);
  });
  return output;
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

at::Tensor Add(const at::Tensor& x, const at::Tensor& y) { return CombineRows("Add", x, y, &AddRows); }

at::Tensor SiluTimes(const at::Tensor& gate, const at::Tensor& up) {
  return CombineRows("SiluTimes", gate, up, &SiluTimesRow);
}

}  // namespace deltaserve::model::cpu_kernels
