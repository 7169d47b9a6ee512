#include "server/model/llama_weights.h"

#include <map>
#include <memory>
#include <optional>
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
                        std::map<std::string, std::shared_ptr<const SafetensorsFile>>& owner) {
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
    auto shared = std::make_shared<const SafetensorsFile>(std::move(file));
    for (const auto& [name, tensor] : shared->tensors()) {
      auto [it, inserted] = owner.emplace(name, shared);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " appears in both ",
                                                       it->second->path(), " and ", shard));
      }
    }
  }
  return absl::OkStatus();
}


absl::StatusOr<at::ScalarType> FloatingType(const SafetensorsFile& file, const std::string& name,
                                            StoredDtype dtype) {
  switch (dtype) {
    case StoredDtype::kF32: return at::kFloat;
    case StoredDtype::kF16: return at::kHalf;
    case StoredDtype::kBF16: return at::kBFloat16;
    default:
      return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor ", name, " has dtype ",
                                                     DtypeName(dtype),
                                                     "; weights must be F32, F16 or BF16"));
  }
}

// Reads the checkpoint's tensors by name, checking each against the shape config.json implies.
class CheckpointReader {
 public:
  CheckpointReader(std::string model_dir, const ModelConfig& config, const WeightLoadOptions& options)
      : model_dir_(std::move(model_dir)), options_(options) {
    for (auto& [name, shape] : ExpectedTensorShapes(config)) shapes_.emplace(name, std::move(shape));
  }

  absl::Status Open() { return OpenShards(model_dir_, owner_); }

  // Matrix: a weight matrix at its storage width. Undefined when the name is optional and absent.
  absl::StatusOr<WeightMatrix> Matrix(const std::string& name) {
    ASSIGN_OR_RETURN(Found found, Find(name));
    const at::ScalarType width = options_.weight_width.value_or(
        options_.device.is_cpu() ? found.type : options_.compute_dtype);
    const bool aligned = reinterpret_cast<uintptr_t>(found.stored->data) %
                             static_cast<uintptr_t>(c10::elementSize(found.type)) == 0;
    if (options_.device.is_cpu() && width == found.type && aligned) {
      // Served from the mapping; the deleter keeps the file mapped while the tensor lives.
      common::MappedFile::ReadIn(found.stored->data, static_cast<size_t>(found.stored->byte_size));
      std::shared_ptr<const SafetensorsFile> file = found.file;
      at::Tensor values = at::from_blob(
          const_cast<uint8_t*>(found.stored->data), found.stored->shape,
          [file](void*) {}, at::TensorOptions().dtype(found.type));
      return WeightMatrix{values, at::Tensor()};
    }
    WeightMatrix matrix;
    if (width == at::kChar) {
      ASSIGN_OR_RETURN(at::Tensor dense, ToTensor(*found.stored, at::kFloat, at::kCPU));
      matrix = QuantizeInt8(dense);
      matrix.values = matrix.values.to(options_.device);
      matrix.scales = matrix.scales.to(options_.device);
    } else {
      ASSIGN_OR_RETURN(matrix.values, ToTensor(*found.stored, width, options_.device));
    }
    common::MappedFile::ReleasePages(found.stored->data, static_cast<size_t>(found.stored->byte_size));
    return matrix;
  }

  // Small: a norm or bias in the compute dtype; undefined when absent and not required.
  absl::StatusOr<at::Tensor> Small(const std::string& name) {
    if (shapes_.count(name) == 0) return at::Tensor();  // not part of this architecture
    ASSIGN_OR_RETURN(Found found, Find(name));
    return ToTensor(*found.stored, options_.compute_dtype, options_.device);
  }

 private:
  struct Found {
    std::shared_ptr<const SafetensorsFile> file;
    const StoredTensor* stored;
    at::ScalarType type;
  };

  absl::StatusOr<Found> Find(const std::string& name) {
    auto it = owner_.find(name);
    if (it == owner_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(model_dir_, ": tensor ", name, " is missing from the checkpoint"));
    }
    const StoredTensor& stored = *it->second->Find(name);
    const std::vector<int64_t>& shape = shapes_.at(name);
    if (stored.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          it->second->path(), ": tensor ", name, " has shape [", absl::StrJoin(stored.shape, ", "),
          "] but config.json implies [", absl::StrJoin(shape, ", "), "]"));
    }
    ASSIGN_OR_RETURN(at::ScalarType type, FloatingType(*it->second, name, stored.dtype));
    return Found{it->second, &stored, type};
  }

  std::string model_dir_;
  WeightLoadOptions options_;
  std::map<std::string, std::vector<int64_t>> shapes_;
  std::map<std::string, std::shared_ptr<const SafetensorsFile>> owner_;
};

}  // namespace

namespace {

template <class Layer>
auto& SelectProjection(Layer& layer, Projection projection) {
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

}  // namespace

WeightMatrix& ProjectionWeight(LayerWeights& layer, Projection projection) {
  return SelectProjection(layer, projection);
}

const WeightMatrix& ProjectionWeight(const LayerWeights& layer, Projection projection) {
  return SelectProjection(layer, projection);
}

void ForEachWeightMatrix(LlamaWeights& weights, const std::function<void(WeightMatrix&)>& visit) {
  visit(weights.embed_tokens);
  visit(weights.lm_head);
  for (LayerWeights& layer : weights.layers) {
    for (Projection projection : {Projection::kQuery, Projection::kKey, Projection::kValue, Projection::kOutput,
                                  Projection::kGate, Projection::kUp, Projection::kDown}) {
      visit(SelectProjection(layer, projection));
    }
  }
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
                                              const ModelConfig& config,
                                              const WeightLoadOptions& options) {
  CheckpointReader reader(model_dir, config, options);
  RETURN_IF_ERROR(reader.Open());
  LlamaWeights weights;
  ASSIGN_OR_RETURN(weights.embed_tokens, reader.Matrix("model.embed_tokens.weight"));
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    LayerWeights w;
    auto name = [layer](const char* suffix) { return LayerName(layer, suffix); };
    ASSIGN_OR_RETURN(w.input_norm, reader.Small(name("input_layernorm.weight")));
    ASSIGN_OR_RETURN(w.q_proj, reader.Matrix(name("self_attn.q_proj.weight")));
    ASSIGN_OR_RETURN(w.k_proj, reader.Matrix(name("self_attn.k_proj.weight")));
    ASSIGN_OR_RETURN(w.v_proj, reader.Matrix(name("self_attn.v_proj.weight")));
    ASSIGN_OR_RETURN(w.o_proj, reader.Matrix(name("self_attn.o_proj.weight")));
    ASSIGN_OR_RETURN(w.q_bias, reader.Small(name("self_attn.q_proj.bias")));
    ASSIGN_OR_RETURN(w.k_bias, reader.Small(name("self_attn.k_proj.bias")));
    ASSIGN_OR_RETURN(w.v_bias, reader.Small(name("self_attn.v_proj.bias")));
    ASSIGN_OR_RETURN(w.o_bias, reader.Small(name("self_attn.o_proj.bias")));
    ASSIGN_OR_RETURN(w.post_attention_norm, reader.Small(name("post_attention_layernorm.weight")));
    ASSIGN_OR_RETURN(w.gate_proj, reader.Matrix(name("mlp.gate_proj.weight")));
    ASSIGN_OR_RETURN(w.up_proj, reader.Matrix(name("mlp.up_proj.weight")));
    ASSIGN_OR_RETURN(w.down_proj, reader.Matrix(name("mlp.down_proj.weight")));
    ASSIGN_OR_RETURN(w.gate_bias, reader.Small(name("mlp.gate_proj.bias")));
    ASSIGN_OR_RETURN(w.up_bias, reader.Small(name("mlp.up_proj.bias")));
    ASSIGN_OR_RETURN(w.down_bias, reader.Small(name("mlp.down_proj.bias")));
    weights.layers.push_back(std::move(w));
  }
  ASSIGN_OR_RETURN(weights.final_norm, reader.Small("model.norm.weight"));
  if (config.tie_word_embeddings) {
    weights.lm_head = weights.embed_tokens;
  } else {
    ASSIGN_OR_RETURN(weights.lm_head, reader.Matrix("lm_head.weight"));
  }
  return weights;
}

}  // namespace deltaserve::model
