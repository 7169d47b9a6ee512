#include "server/model/rope.h"

#include <cmath>

namespace deltaserve::model {

std::vector<double> RopeInverseFrequencies(const ModelConfig& config) {
  const int64_t half = config.head_dim / 2;
  std::vector<double> inverse(half);
  for (int64_t i = 0; i < half; ++i) {
    inverse[i] = 1.0 / std::pow(config.rope_theta, static_cast<double>(2 * i) / config.head_dim);
  }
  const RopeScaling& scaling = config.rope_scaling;
  if (scaling.type == RopeScalingType::kLinear) {
    for (double& value : inverse) value /= scaling.factor;
  } else if (scaling.type == RopeScalingType::kLlama3) {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band between
    // low_freq_wavelen and high_freq_wavelen interpolated smoothly.
    const double original = static_cast<double>(scaling.original_max_position_embeddings);
    const double low_freq_wavelen = original / scaling.low_freq_factor;
    const double high_freq_wavelen = original / scaling.high_freq_factor;
    for (double& value : inverse) {
      const double wavelen = 2.0 * M_PI / value;
      if (wavelen < high_freq_wavelen) continue;
      if (wavelen > low_freq_wavelen) {
        value /= scaling.factor;
        continue;
      }
      const double smooth = (original / wavelen - scaling.low_freq_factor) /
                            (scaling.high_freq_factor - scaling.low_freq_factor);
      value = (1.0 - smooth) * value / scaling.factor + smooth * value;
    }
  }
  return inverse;
}

std::pair<at::Tensor, at::Tensor> RotaryTables(const at::Tensor& inverse_frequencies,
                                               const at::Tensor& positions,
                                               at::ScalarType dtype) {
  at::Tensor angles = positions.to(at::kDouble).unsqueeze(1) * inverse_frequencies.unsqueeze(0);
  return {angles.cos().to(dtype), angles.sin().to(dtype)};
}

at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor first = x.narrow(-1, 0, half);
  at::Tensor second = x.narrow(-1, half, half);
  at::Tensor c = cos.unsqueeze(1);
  at::Tensor s = sin.unsqueeze(1);
  return at::cat({first * c - second * s, second * c + first * s}, -1);
}

}  // namespace deltaserve::model
