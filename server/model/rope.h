// Rotary position embeddings (RoPE) in the Hugging Face "rotate half" layout.
// RopeInverseFrequencies gives the head_dim/2 inverse frequencies for a config, including
// linear and llama3 frequency scaling. ApplyRotary rotates x [tokens, heads, head_dim] by the
// angles position * inverse_frequency (computed in double, applied in x's dtype). Pure
// functions, thread-safe.
#pragma once

#include <vector>

#include <ATen/ATen.h>

#include "server/model/model_config.h"

namespace deltaserve::model {

std::vector<double> RopeInverseFrequencies(const ModelConfig& config);

// RotaryTables returns (cos, sin), each [tokens, head_dim/2] in `dtype` on positions' device.
std::pair<at::Tensor, at::Tensor> RotaryTables(const at::Tensor& inverse_frequencies,
                                               const at::Tensor& positions,
                                               at::ScalarType dtype);

// ApplyRotary returns x rotated; x is [tokens, heads, head_dim], cos/sin [tokens, head_dim/2].
at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace deltaserve::model
