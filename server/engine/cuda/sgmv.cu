#include "server/engine/cuda/sgmv.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace deltaserve::engine::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

template <typename T>
__device__ float ToFloat(T value);
template <>
__device__ float ToFloat<float>(float value) { return value; }
template <>
__device__ float ToFloat<__half>(__half value) { return __half2float(value); }
template <>
__device__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 value) { return __bfloat162float(value); }

template <typename T>
__device__ T FromFloat(float value);
template <>
__device__ float FromFloat<float>(float value) { return value; }
template <>
__device__ __half FromFloat<__half>(float value) { return __float2half(value); }
template <>
__device__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float value) { return __float2bfloat16(value); }

// Grid: (segment, block of warps). Each warp computes whole dot products x[row] . A[k] for the
// (row, k) pairs of its segment it is given, its lanes striding over `in` and then reducing.
template <typename T>
__global__ void ShrinkKernel(const T* x, int64_t x_stride, int64_t in, float* shrunk, int32_t max_rank,
                             const int32_t* starts, const int32_t* ranks, const void* const* factors) {
  const int segment = blockIdx.x;
  const int32_t first = starts[segment], rows = starts[segment + 1] - first, rank = ranks[segment];
  const T* a = static_cast<const T*>(factors[segment]);
  const int warp = (blockIdx.y * blockDim.x + threadIdx.x) / kWarp;
  const int warps = gridDim.y * blockDim.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  for (int pair = warp; pair < rows * rank; pair += warps) {
    const int row = pair / rank, k = pair % rank;
    const T* v = x + (first + row) * x_stride;
    const T* w = a + static_cast<int64_t>(k) * in;
    float sum = 0;
    for (int64_t i = lane; i < in; i += kWarp) sum += ToFloat(v[i]) * ToFloat(w[i]);
    for (int offset = kWarp / 2; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0) shrunk[(first + row) * static_cast<int64_t>(max_rank) + k] = sum;
  }
}

// Grid: (segment, block of output columns). Each thread owns one output column o and walks the
// segment's rows: reads of B^T[k, o] are consecutive across the threads of a warp.
template <typename T>
__global__ void ExpandKernel(const float* shrunk, int32_t max_rank, T* y, int64_t y_stride, int64_t out,
                             const int32_t* starts, const int32_t* ranks, const float* scales,
                             const void* const* factors) {
  const int segment = blockIdx.x;
  const int64_t o = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (o >= out) return;
  const int32_t first = starts[segment], rows = starts[segment + 1] - first, rank = ranks[segment];
  const T* b_t = static_cast<const T*>(factors[segment]);
  const float scale = scales[segment];
  for (int row = 0; row < rows; ++row) {
    const float* s = shrunk + (first + row) * static_cast<int64_t>(max_rank);
    float sum = 0;
    for (int k = 0; k < rank; ++k) sum += s[k] * ToFloat(b_t[static_cast<int64_t>(k) * out + o]);
    T* target = y + (first + row) * y_stride + o;
    *target = FromFloat<T>(ToFloat(*target) + scale * sum);
  }
}

std::string Check() {
  cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? std::string() : std::string(cudaGetErrorString(error));
}

template <typename T>
void Shrink(const SgmvShrinkArgs& args, cudaStream_t stream) {
  const dim3 grid(args.segments.segments, 4);
  ShrinkKernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(args.x), args.x_stride, args.in, args.shrunk,
                                                args.max_rank, args.segments.segment_starts, args.segments.ranks,
                                                args.segments.factors);
}

template <typename T>
void Expand(const SgmvExpandArgs& args, cudaStream_t stream) {
  const dim3 grid(args.segments.segments, static_cast<unsigned>((args.out + kThreads - 1) / kThreads));
  ExpandKernel<T><<<grid, kThreads, 0, stream>>>(args.shrunk, args.max_rank, static_cast<T*>(args.y), args.y_stride,
                                                args.out, args.segments.segment_starts, args.segments.ranks,
                                                args.segments.scales, args.segments.factors);
}

}  // namespace

std::string LaunchSgmvShrink(const SgmvShrinkArgs& args, void* stream) {
  if (args.segments.segments == 0) return "";
  auto s = static_cast<cudaStream_t>(stream);
  switch (args.type) {
    case ElementType::kFloat32: Shrink<float>(args, s); break;
    case ElementType::kFloat16: Shrink<__half>(args, s); break;
    case ElementType::kBFloat16: Shrink<__nv_bfloat16>(args, s); break;
  }
  return Check();
}

std::string LaunchSgmvExpand(const SgmvExpandArgs& args, void* stream) {
  if (args.segments.segments == 0) return "";
  auto s = static_cast<cudaStream_t>(stream);
  switch (args.type) {
    case ElementType::kFloat32: Expand<float>(args, s); break;
    case ElementType::kFloat16: Expand<__half>(args, s); break;
    case ElementType::kBFloat16: Expand<__nv_bfloat16>(args, s); break;
  }
  return Check();
}

}  // namespace deltaserve::engine::cuda
