// Segmented gather matrix-vector products (SGMV, as in Punica) for batched LoRA on CUDA: a batch's
// rows are grouped into segments, each served by its own adapter, and one kernel launch per step
// computes, for every segment at once,
//   shrink:  s[rows, rank] = x[rows, in] A^T              (A [rank, in] row-major)
//   expand:  y[rows, out] += scale * s[rows, rank] B^T    (B given as B^T [rank, out] row-major)
// so a target module costs two launches for the whole batch, whatever the number of adapters,
// instead of two small matrix products per adapter. x, y and the factors are in one element type
// (float32, float16 or bfloat16); s and all sums are float32.
//
// This header has no CUDA types, so host code of any kind can include it; pointers are device
// pointers, `stream` a cudaStream_t. Built only when CMake finds nvcc (DELTASERVE_HAVE_CUDA_KERNELS).
// Launch* return an empty string on success, else the CUDA error text.
#pragma once

#include <cstdint>
#include <string>

namespace deltaserve::engine::cuda {

enum class ElementType { kFloat32, kFloat16, kBFloat16 };

// Per-segment arrays, each on the device, `segments` long (segment_starts: segments + 1 entries,
// rows [segment_starts[i], segment_starts[i + 1]) belong to segment i).
struct SgmvSegments {
  int32_t segments = 0;
  const int32_t* segment_starts = nullptr;
  const int32_t* ranks = nullptr;        // each at most max_rank
  const float* scales = nullptr;         // expand only
  const void* const* factors = nullptr;  // shrink: A of each segment; expand: B^T of each segment
};

struct SgmvShrinkArgs {
  ElementType type = ElementType::kFloat32;
  const void* x = nullptr;
  int64_t x_stride = 0;  // elements between rows
  int64_t in = 0;
  float* shrunk = nullptr;  // [rows, max_rank] float32, row stride max_rank
  int32_t max_rank = 0;
  SgmvSegments segments;
};

struct SgmvExpandArgs {
  ElementType type = ElementType::kFloat32;
  const float* shrunk = nullptr;  // as the shrink wrote it
  int32_t max_rank = 0;
  void* y = nullptr;
  int64_t y_stride = 0;
  int64_t out = 0;
  SgmvSegments segments;
};

std::string LaunchSgmvShrink(const SgmvShrinkArgs& args, void* stream);
std::string LaunchSgmvExpand(const SgmvExpandArgs& args, void* stream);

}  // namespace deltaserve::engine::cuda
