// LlamaWeights: the tensors of a Llama-family model, on one device.
// LoadLlamaWeights reads model.safetensors or a sharded model.safetensors.index.json from a
// Hugging Face model directory and checks every expected tensor is present with the shape the
// config implies (the error names the tensor). Tensors the model does not use (e.g.
// rotary_emb.inv_freq) are ignored. Blocking (disk and copies).
//
// Widths: the weight matrices (projections, embeddings, LM head) are kept at a storage width
// (weight_matrix.h): the checkpoint's own by default, or the one asked for. On the CPU a matrix
// already at its storage width in the file is served straight from the memory-mapped file (no
// copy; its pages are read in at load, and the mapping lives as long as any tensor uses it);
// others are converted, and the file pages they were read from are given back. Norms and
// biases are small and converted to the compute dtype.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/model/model_config.h"
#include "server/model/weight_matrix.h"

namespace deltaserve::model {

// The seven projections of a layer that variants may change.
enum class Projection { kQuery, kKey, kValue, kOutput, kGate, kUp, kDown };

struct LayerWeights {
  at::Tensor input_norm;            // [hidden]
  WeightMatrix q_proj, k_proj, v_proj, o_proj;  // [out, in]
  at::Tensor q_bias, k_bias, v_bias, o_bias;  // undefined when the architecture has none
  at::Tensor post_attention_norm;   // [hidden]
  WeightMatrix gate_proj, up_proj, down_proj;
  at::Tensor gate_bias, up_bias, down_bias;
};

struct LlamaWeights {
  WeightMatrix embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;      // [hidden]
  WeightMatrix lm_head;       // [vocab, hidden]; the same tensors as embed_tokens when tied
};

struct WeightLoadOptions {
  at::ScalarType compute_dtype = at::kFloat;  // norms and biases
  // The weight matrices' storage width; nullopt keeps each tensor's width in the checkpoint.
  std::optional<at::ScalarType> weight_width;
  at::Device device = at::kCPU;
};

// ExpectedTensorShapes lists every Hugging Face tensor name the config requires, with shape.
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensorShapes(
    const ModelConfig& config);

// ProjectionWeight returns the [out, in] weight of one projection (assign a new WeightMatrix to
// change it: the loaded values may be read-only mapped memory).
WeightMatrix& ProjectionWeight(LayerWeights& layer, Projection projection);
const WeightMatrix& ProjectionWeight(const LayerWeights& layer, Projection projection);

// ForEachWeightMatrix calls `visit` on the embedding, the LM head and every layer's seven
// projections (to re-store or transform all of them alike).
void ForEachWeightMatrix(LlamaWeights& weights, const std::function<void(WeightMatrix&)>& visit);

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const std::string& model_dir,
                                              const ModelConfig& config,
                                              const WeightLoadOptions& options);

}  // namespace deltaserve::model
