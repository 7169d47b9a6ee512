// Portable SIMD for the CPU kernels: 16-float vectors through GCC's vector extensions, which
// compile to one AVX-512 register, two AVX2 registers or plain code, whichever the function they
// are inlined into targets. Functions marked DELTASERVE_CPU_CLONES are compiled three times
// (x86-64-v4 = AVX-512, v3 = AVX2+FMA, baseline) and the best one for the running CPU is picked
// when the program loads (GCC ifunc); elsewhere the marker is empty.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DELTASERVE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DELTASERVE_CPU_CLONES
#endif

namespace deltaserve::model::cpu_kernels {

// 16 floats; unaligned loads and stores (alignment 4) and no strict-aliasing assumptions.
typedef float Lanes __attribute__((vector_size(64), aligned(4), may_alias));
constexpr int64_t kLanes = 16;

__attribute__((always_inline)) inline Lanes LoadLanes(const float* from) {
  return *reinterpret_cast<const Lanes*>(from);
}

__attribute__((always_inline)) inline void StoreLanes(float* to, Lanes lanes) {
  *reinterpret_cast<Lanes*>(to) = lanes;
}

// The sum of the lanes, halving the vector three times, then four scalar additions.
__attribute__((always_inline)) inline float SumOfLanes(Lanes lanes) {
  typedef float Eight __attribute__((vector_size(32)));
  typedef float Four __attribute__((vector_size(16)));
  const Eight eight = __builtin_shufflevector(lanes, lanes, 0, 1, 2, 3, 4, 5, 6, 7) +
                      __builtin_shufflevector(lanes, lanes, 8, 9, 10, 11, 12, 13, 14, 15);
  const Four four = __builtin_shufflevector(eight, eight, 0, 1, 2, 3) +
                    __builtin_shufflevector(eight, eight, 4, 5, 6, 7);
  return (four[0] + four[2]) + (four[1] + four[3]);
}

typedef int32_t LaneInts __attribute__((vector_size(64)));

__attribute__((always_inline)) inline Lanes SplatLanes(float value) { return Lanes{} + value; }

__attribute__((always_inline)) inline Lanes MaxLanes(Lanes a, Lanes b) { return a > b ? a : b; }

// e^x lane by lane, to about 2 float32 ulps; 0 below -87.3 (so e^-inf = 0), e^88.3 above 88.3.
// x = n ln 2 + r with |r| <= ln 2 / 2; e^r by the Cephes single-precision polynomial; 2^n built
// in the exponent bits.
__attribute__((always_inline)) inline Lanes ExpLanes(Lanes x) {
  const Lanes clamped = MaxLanes(SplatLanes(-87.3f), x < SplatLanes(88.3f) ? x : SplatLanes(88.3f));
  const Lanes magic = SplatLanes(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const Lanes n = (clamped * 1.44269504088896341f + magic) - magic;
  const Lanes r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  Lanes p = SplatLanes(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const LaneInts bits = (__builtin_convertvector(n, LaneInts) + 127) << 23;
  const Lanes result = p * reinterpret_cast<const Lanes&>(bits);
  return x < SplatLanes(-87.3f) ? SplatLanes(0.0f) : result;
}

}  // namespace deltaserve::model::cpu_kernels
