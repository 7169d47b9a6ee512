#include "server/model/llama_weights.h"

#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"
#include "server/model/safetensors_file.h"
#include "server/model/safetensors_tensor.h"

namespace deltaserve::model {
namespace {

std::string LayerName(int64_t layer, const char* suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

// Opens the single file or every shard named by the index; maps tensor name -> file.
absl::Status OpenShards(const std::string& model_dir,
                        std::vector<std::unique_ptr<SafetensorsFile>>& files,
                        std::map<std::string, const SafetensorsFile*>& owner) {
  std::string single = common::JoinPath(model_dir, "model.safetensors");
  std::string index_path = common::JoinPath(model_dir, "model.safetensors.index.json");
  std::vector<std::string> shard_names;
  if (common::PathExists(single)) {
    shard_names.push_back("model.safetensors");
  } else if (common::PathExists(index_path)) {
    ASSIGN_OR_RETURN(std::string text, common::ReadFileToString(index_path, 64u << 20));
    auto index = nlohmann::json::parse(text, nullptr, false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
        !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": expected a JSON object with a \"weight_map\" object"));
    }
    for (auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string() || shard.get<std::string>().find('/') != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": weight_map[\"", name, "\"] must be a file name in the model directory"));
      }
      std::string file = shard.get<std::string>();
      if (std::find(shard_names.begin(), shard_names.end(), file) == shard_names.end()) {
        shard_names.push_back(file);
      }
    }
  } else {
    return absl::NotFoundError(absl::StrCat(
        model_dir, " has neither model.safetensors nor model.safetensors.index.json "
                   "(only safetensors weights are loaded; pickled .bin files are refused)"));
  }
  for (const std::string& shard : shard_names) {
    ASSIGN_OR_RETURN(SafetensorsFile file,
                     SafetensorsFile::Open(common::JoinPath(model_dir, shard)));
    files.push_back(std::make_unique<SafetensorsFile>(std::move(file)));
    for (const auto& [name, tensor] : files.back()->tensors()) {
      auto [it, inserted] = owner.emplace(name, files.back().get());
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " appears in both ",
                                                       it->second->path(), " and ", shard));
      }
    }
  }
  return absl::OkStatus();
}

// Stacks `parts` into one tensor along dimension 0 and rebinds each part to its view of it.
at::Tensor Stack(std::initializer_list<at::Tensor*> parts) {
  if (!(*parts.begin())->defined()) return at::Tensor();
  std::vector<at::Tensor> tensors;
  for (at::Tensor* part : parts) tensors.push_back(*part);
  at::Tensor stacked = at::cat(tensors, 0);
  int64_t offset = 0;
  for (at::Tensor* part : parts) {
    const int64_t rows = part->size(0);
    *part = stacked.narrow(0, offset, rows);
    offset += rows;
  }
  return stacked;
}

}  // namespace

at::Tensor& ProjectionWeight(LayerWeights& layer, Projection projection) {
  switch (projection) {
    case Projection::kQuery: return layer.q_proj;
    case Projection::kKey: return layer.k_proj;
    case Projection::kValue: return layer.v_proj;
    case Projection::kOutput: return layer.o_proj;
    case Projection::kGate: return layer.gate_proj;
    case Projection::kUp: return layer.up_proj;
    case Projection::kDown: return layer.down_proj;
  }
  return layer.q_proj;
}

void FuseProjections(LayerWeights& w) {
  w.qkv_proj = Stack({&w.q_proj, &w.k_proj, &w.v_proj});
  w.qkv_bias = Stack({&w.q_bias, &w.k_bias, &w.v_bias});
  w.gate_up_proj = Stack({&w.gate_proj, &w.up_proj});
  w.gate_up_bias = Stack({&w.gate_bias, &w.up_bias});
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensorShapes(
    const ModelConfig& config) {
  const int64_t hidden = config.hidden_size;
  const int64_t q_out = config.num_attention_heads * config.head_dim;
  const int64_t kv_out = config.num_key_value_heads * config.head_dim;
  const int64_t inter = config.intermediate_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  shapes.push_back({"model.embed_tokens.weight", {config.vocab_size, hidden}});
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    shapes.push_back({LayerName(layer, "input_layernorm.weight"), {hidden}});
    shapes.push_back({LayerName(layer, "self_attn.q_proj.weight"), {q_out, hidden}});
    shapes.push_back({LayerName(layer, "self_attn.k_proj.weight"), {kv_out, hidden}});
    shapes.push_back({LayerName(layer, "self_attn.v_proj.weight"), {kv_out, hidden}});
    shapes.push_back({LayerName(layer, "self_attn.o_proj.weight"), {hidden, q_out}});
    if (config.attention_qkv_bias) {
      shapes.push_back({LayerName(layer, "self_attn.q_proj.bias"), {q_out}});
      shapes.push_back({LayerName(layer, "self_attn.k_proj.bias"), {kv_out}});
      shapes.push_back({LayerName(layer, "self_attn.v_proj.bias"), {kv_out}});
    }
    if (config.attention_output_bias) {
      shapes.push_back({LayerName(layer, "self_attn.o_proj.bias"), {hidden}});
    }
    shapes.push_back({LayerName(layer, "post_attention_layernorm.weight"), {hidden}});
    shapes.push_back({LayerName(layer, "mlp.gate_proj.weight"), {inter, hidden}});
    shapes.push_back({LayerName(layer, "mlp.up_proj.weight"), {inter, hidden}});
    shapes.push_back({LayerName(layer, "mlp.down_proj.weight"), {hidden, inter}});
    if (config.mlp_bias) {
      shapes.push_back({LayerName(layer, "mlp.gate_proj.bias"), {inter}});
      shapes.push_back({LayerName(layer, "mlp.up_proj.bias"), {inter}});
      shapes.push_back({LayerName(layer, "mlp.down_proj.bias"), {hidden}});
    }
  }
  shapes.push_back({"model.norm.weight", {hidden}});
  if (!config.tie_word_embeddings) shapes.push_back({"lm_head.weight", {config.vocab_size, hidden}});
  return shapes;
}

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const std::string& model_dir,
                                              const ModelConfig& config, at::ScalarType dtype,
                                              const at::Device& device) {
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, const SafetensorsFile*> owner;
  RETURN_IF_ERROR(OpenShards(model_dir, files, owner));

  std::map<std::string, at::Tensor> loaded;
  for (const auto& [name, shape] : ExpectedTensorShapes(config)) {
    auto it = owner.find(name);
    if (it == owner.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(model_dir, ": tensor ", name, " is missing from the checkpoint"));
    }
    const StoredTensor& stored = *it->second->Find(name);
    if (stored.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          it->second->path(), ": tensor ", name, " has shape [", absl::StrJoin(stored.shape, ", "),
          "] but config.json implies [", absl::StrJoin(shape, ", "), "]"));
    }
    if (stored.dtype != StoredDtype::kF32 && stored.dtype != StoredDtype::kF16 &&
        stored.dtype != StoredDtype::kBF16) {
      return absl::InvalidArgumentError(absl::StrCat(it->second->path(), ": tensor ", name,
                                                     " has dtype ", DtypeName(stored.dtype),
                                                     "; weights must be F32, F16 or BF16"));
    }
    ASSIGN_OR_RETURN(loaded[name], ToTensor(stored, dtype, device));
  }
  auto take = [&loaded](const std::string& name) {
    auto it = loaded.find(name);
    return it == loaded.end() ? at::Tensor() : it->second;
  };
  LlamaWeights weights;
  weights.embed_tokens = take("model.embed_tokens.weight");
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    LayerWeights w;
    w.input_norm = take(LayerName(layer, "input_layernorm.weight"));
    w.q_proj = take(LayerName(layer, "self_attn.q_proj.weight"));
    w.k_proj = take(LayerName(layer, "self_attn.k_proj.weight"));
    w.v_proj = take(LayerName(layer, "self_attn.v_proj.weight"));
    w.o_proj = take(LayerName(layer, "self_attn.o_proj.weight"));
    w.q_bias = take(LayerName(layer, "self_attn.q_proj.bias"));
    w.k_bias = take(LayerName(layer, "self_attn.k_proj.bias"));
    w.v_bias = take(LayerName(layer, "self_attn.v_proj.bias"));
    w.o_bias = take(LayerName(layer, "self_attn.o_proj.bias"));
    w.post_attention_norm = take(LayerName(layer, "post_attention_layernorm.weight"));
    w.gate_proj = take(LayerName(layer, "mlp.gate_proj.weight"));
    w.up_proj = take(LayerName(layer, "mlp.up_proj.weight"));
    w.down_proj = take(LayerName(layer, "mlp.down_proj.weight"));
    w.gate_bias = take(LayerName(layer, "mlp.gate_proj.bias"));
    w.up_bias = take(LayerName(layer, "mlp.up_proj.bias"));
    w.down_bias = take(LayerName(layer, "mlp.down_proj.bias"));
    FuseProjections(w);
    weights.layers.push_back(std::move(w));
  }
  weights.final_norm = take("model.norm.weight");
  weights.lm_head = config.tie_word_embeddings ? weights.embed_tokens : take("lm_head.weight");
  return weights;
}

}  // namespace deltaserve::model
