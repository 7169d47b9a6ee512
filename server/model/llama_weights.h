// LlamaWeights: the tensors of a Llama-family model, on one device in one dtype.
// LoadLlamaWeights reads model.safetensors or a sharded model.safetensors.index.json from a
// Hugging Face model directory, checks every expected tensor is present with the shape the
// config implies (the error names the tensor), and converts to the compute dtype. Tensors the
// model does not use (e.g. rotary_emb.inv_freq) are ignored. Blocking (disk and copies).
#pragma once

#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/model/model_config.h"

namespace deltaserve::model {

// The seven projections of a layer that variants may change.
enum class Projection { kQuery, kKey, kValue, kOutput, kGate, kUp, kDown };

struct LayerWeights {
  at::Tensor input_norm;            // [hidden]
  at::Tensor q_proj, k_proj, v_proj, o_proj;  // [out, in]
  at::Tensor q_bias, k_bias, v_bias, o_bias;  // undefined when the architecture has none
  at::Tensor post_attention_norm;   // [hidden]
  at::Tensor gate_proj, up_proj, down_proj;
  at::Tensor gate_bias, up_bias, down_bias;
  // q/k/v and gate/up stacked along the output dimension, so each group is one matrix product.
  // q_proj, k_proj, v_proj (and gate_proj, up_proj, and their biases) are views into these.
  at::Tensor qkv_proj, qkv_bias;
  at::Tensor gate_up_proj, gate_up_bias;
};

struct LlamaWeights {
  at::Tensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;    // [hidden]
  at::Tensor lm_head;       // [vocab, hidden]; the same tensor as embed_tokens when tied
};

// ExpectedTensorShapes lists every Hugging Face tensor name the config requires, with shape.
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensorShapes(
    const ModelConfig& config);

// ProjectionWeight returns the [out, in] weight of one projection (a view into the fused tensor
// after loading; assign a new tensor and call FuseProjections to change it).
at::Tensor& ProjectionWeight(LayerWeights& layer, Projection projection);

// FuseProjections (re)builds qkv_proj / gate_up_proj (and biases) from the per-projection
// tensors and rebinds those to views of them. Call it after replacing per-projection tensors.
void FuseProjections(LayerWeights& layer);

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const std::string& model_dir,
                                              const ModelConfig& config, at::ScalarType dtype,
                                              const at::Device& device);

}  // namespace deltaserve::model
