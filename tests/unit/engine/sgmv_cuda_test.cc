// The CUDA SGMV kernels against a plain CPU computation of the same products in double precision,
// for float32 and bfloat16, over segments of different ranks and lengths (one of them empty).
// Skips when no GPU is visible (CI has none; the kernels are still compiled there).
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "server/engine/cuda/sgmv.h"

namespace deltaserve::engine::cuda {
namespace {

uint16_t ToBFloat16(float value) {  // round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

float FromBFloat16(uint16_t value) {
  uint32_t bits = static_cast<uint32_t>(value) << 16;
  float result;
  std::memcpy(&result, &bits, 4);
  return result;
}

// A device copy of a host vector, freed with the object.
class DeviceBuffer {
 public:
  DeviceBuffer(const void* data, size_t bytes) {
    EXPECT_EQ(cudaMalloc(&pointer_, bytes), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(pointer_, data, bytes, cudaMemcpyHostToDevice), cudaSuccess);
  }
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.data(), host.size() * sizeof(T)) {}
  ~DeviceBuffer() { cudaFree(pointer_); }
  void* get() const { return pointer_; }

 private:
  void* pointer_ = nullptr;
};

bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

void ExpectMatchesCpu(bool bf16) {
  const int64_t in = 96, out = 160, max_rank = 16;
  const std::vector<int32_t> starts = {0, 3, 4, 4, 11};  // segments of 3, 1, 0 and 7 rows
  const std::vector<int32_t> ranks = {4, 16, 8, 12};
  const std::vector<float> scales = {0.5f, 2.0f, 1.0f, -1.5f};
  const int64_t rows = starts.back();
  std::mt19937 generator(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Values as the kernels will see them (rounded to bfloat16 where that is the type).
  auto draw = [&](size_t count) {
    std::vector<float> values(count);
    for (float& value : values) value = bf16 ? FromBFloat16(ToBFloat16(normal(generator))) : normal(generator);
    return values;
  };
  std::vector<float> x = draw(rows * in), y = draw(rows * out);
  std::vector<std::vector<float>> a, b_t;  // A [rank, in], B^T [rank, out]
  for (int32_t rank : ranks) {
    a.push_back(draw(rank * in));
    b_t.push_back(draw(rank * out));
  }
  // The reference: y + scale * (x A^T) B^T per segment, in double.
  std::vector<double> expected(y.begin(), y.end());
  for (size_t segment = 0; segment < ranks.size(); ++segment) {
    for (int32_t row = starts[segment]; row < starts[segment + 1]; ++row) {
      std::vector<double> shrunk(ranks[segment], 0.0);
      for (int32_t k = 0; k < ranks[segment]; ++k) {
        for (int64_t i = 0; i < in; ++i) shrunk[k] += double(x[row * in + i]) * a[segment][k * in + i];
      }
      for (int64_t o = 0; o < out; ++o) {
        double sum = 0;
        for (int32_t k = 0; k < ranks[segment]; ++k) sum += shrunk[k] * b_t[segment][k * out + o];
        expected[row * out + o] += scales[segment] * sum;
      }
    }
  }

  auto device_values = [&](const std::vector<float>& values) {
    if (!bf16) return std::make_unique<DeviceBuffer>(values);
    std::vector<uint16_t> packed(values.size());
    for (size_t i = 0; i < values.size(); ++i) packed[i] = ToBFloat16(values[i]);
    return std::make_unique<DeviceBuffer>(packed);
  };
  auto x_device = device_values(x), y_device = device_values(y);
  std::vector<std::unique_ptr<DeviceBuffer>> factors;
  std::vector<const void*> a_pointers, b_pointers;
  for (size_t segment = 0; segment < ranks.size(); ++segment) {
    factors.push_back(device_values(a[segment]));
    a_pointers.push_back(factors.back()->get());
    factors.push_back(device_values(b_t[segment]));
    b_pointers.push_back(factors.back()->get());
  }
  DeviceBuffer starts_device(starts), ranks_device(ranks), scales_device(scales);
  DeviceBuffer a_table(a_pointers), b_table(b_pointers);
  DeviceBuffer shrunk(std::vector<float>(rows * max_rank, 0.0f));

  SgmvSegments segments{static_cast<int32_t>(ranks.size()), static_cast<const int32_t*>(starts_device.get()),
                        static_cast<const int32_t*>(ranks_device.get()), static_cast<const float*>(scales_device.get()),
                        nullptr};
  const ElementType type = bf16 ? ElementType::kBFloat16 : ElementType::kFloat32;
  SgmvShrinkArgs shrink{type, x_device->get(), in, in, static_cast<float*>(shrunk.get()), max_rank, segments};
  shrink.segments.factors = static_cast<const void* const*>(a_table.get());
  ASSERT_EQ(LaunchSgmvShrink(shrink, nullptr), "");
  SgmvExpandArgs expand{type, static_cast<const float*>(shrunk.get()), max_rank, y_device->get(), out, out, segments};
  expand.segments.factors = static_cast<const void* const*>(b_table.get());
  ASSERT_EQ(LaunchSgmvExpand(expand, nullptr), "");
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  std::vector<float> actual(rows * out);
  if (bf16) {
    std::vector<uint16_t> packed(rows * out);
    ASSERT_EQ(cudaMemcpy(packed.data(), y_device->get(), packed.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    for (size_t i = 0; i < packed.size(); ++i) actual[i] = FromBFloat16(packed[i]);
  } else {
    ASSERT_EQ(cudaMemcpy(actual.data(), y_device->get(), actual.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  }
  const double tolerance = bf16 ? 2e-2 : 1e-4;
  for (size_t i = 0; i < actual.size(); ++i) {
    ASSERT_NEAR(actual[i], expected[i], tolerance * (1 + std::abs(expected[i]))) << "element " << i;
  }
}

TEST(SgmvCudaTest, Float32MatchesTheCpu) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  ExpectMatchesCpu(false);
}

TEST(SgmvCudaTest, BFloat16MatchesTheCpu) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  ExpectMatchesCpu(true);
}

}  // namespace
}  // namespace deltaserve::engine::cuda
