#include "server/model/model_config.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"

namespace deltaserve::model {
namespace {

using Json = nlohmann::json;

absl::StatusOr<int64_t> RequiredPositiveInt(const Json& json, const char* key) {
  auto it = json.find(key);
  if (it == json.end() || !it->is_number_integer() || it->get<int64_t>() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: \"", key, "\" must be a positive integer"));
  }
  return it->get<int64_t>();
}

absl::StatusOr<int64_t> OptionalPositiveInt(const Json& json, const char* key, int64_t fallback) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return fallback;
  return RequiredPositiveInt(json, key);
}

absl::StatusOr<double> OptionalNumber(const Json& json, const char* key, double fallback) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return fallback;
  if (!it->is_number()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: \"", key, "\" must be a number"));
  }
  return it->get<double>();
}

bool OptionalBool(const Json& json, const char* key, bool fallback) {
  auto it = json.find(key);
  if (it == json.end() || !it->is_boolean()) return fallback;
  return it->get<bool>();
}

std::vector<int32_t> TokenIdList(const Json& json, const char* key) {
  std::vector<int32_t> ids;
  auto it = json.find(key);
  if (it == json.end()) return ids;
  if (it->is_number_integer()) ids.push_back(it->get<int32_t>());
  if (it->is_array()) {
    for (const Json& id : *it) {
      if (id.is_number_integer()) ids.push_back(id.get<int32_t>());
    }
  }
  return ids;
}

absl::StatusOr<RopeScaling> ParseRopeScaling(const Json& json) {
  RopeScaling scaling;
  auto it = json.find("rope_scaling");
  if (it == json.end() || it->is_null()) return scaling;
  if (!it->is_object()) {
    return absl::InvalidArgumentError("config.json: \"rope_scaling\" must be an object or null");
  }
  std::string type = it->value("rope_type", it->value("type", std::string("default")));
  if (type == "default") return scaling;
  ASSIGN_OR_RETURN(scaling.factor, OptionalNumber(*it, "factor", 1.0));
  if (scaling.factor <= 0) {
    return absl::InvalidArgumentError("config.json: rope_scaling.factor must be positive");
  }
  if (type == "linear") {
    scaling.type = RopeScalingType::kLinear;
  } else if (type == "llama3") {
    scaling.type = RopeScalingType::kLlama3;
    ASSIGN_OR_RETURN(scaling.low_freq_factor, OptionalNumber(*it, "low_freq_factor", 1.0));
    ASSIGN_OR_RETURN(scaling.high_freq_factor, OptionalNumber(*it, "high_freq_factor", 4.0));
    ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                     OptionalPositiveInt(*it, "original_max_position_embeddings", 8192));
    if (scaling.high_freq_factor <= scaling.low_freq_factor) {
      return absl::InvalidArgumentError(
          "config.json: rope_scaling.high_freq_factor must exceed low_freq_factor");
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: rope_scaling type \"", type,
        "\" is not supported (supported: linear, llama3, or none)"));
  }
  return scaling;
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& json_text) {
  Json json = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError("config.json is not a JSON object");
  }
  ModelConfig config;
  auto architectures = json.find("architectures");
  if (architectures == json.end() || !architectures->is_array() || architectures->empty() ||
      !(*architectures)[0].is_string()) {
    return absl::InvalidArgumentError("config.json: \"architectures\" must list the model class");
  }
  config.architecture = (*architectures)[0].get<std::string>();
  const bool is_qwen2 = config.architecture == "Qwen2ForCausalLM";
  if (config.architecture != "LlamaForCausalLM" && config.architecture != "MistralForCausalLM" &&
      !is_qwen2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: architecture ", config.architecture,
        " is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"));
  }
  std::string activation = json.value("hidden_act", std::string("silu"));
  if (activation != "silu") {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: hidden_act \"", activation, "\" is not supported (only silu)"));
  }
  ASSIGN_OR_RETURN(config.vocab_size, RequiredPositiveInt(json, "vocab_size"));
  ASSIGN_OR_RETURN(config.hidden_size, RequiredPositiveInt(json, "hidden_size"));
  ASSIGN_OR_RETURN(config.intermediate_size, RequiredPositiveInt(json, "intermediate_size"));
  ASSIGN_OR_RETURN(config.num_hidden_layers, RequiredPositiveInt(json, "num_hidden_layers"));
  ASSIGN_OR_RETURN(config.num_attention_heads, RequiredPositiveInt(json, "num_attention_heads"));
  ASSIGN_OR_RETURN(config.num_key_value_heads, OptionalPositiveInt(json, "num_key_value_heads",
                                                                   config.num_attention_heads));
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: num_attention_heads (", config.num_attention_heads,
        ") must be a multiple of num_key_value_heads (", config.num_key_value_heads, ")"));
  }
  int64_t default_head_dim = config.hidden_size / config.num_attention_heads;
  ASSIGN_OR_RETURN(config.head_dim, OptionalPositiveInt(json, "head_dim", default_head_dim));
  if (config.head_dim % 2 != 0) {
    return absl::InvalidArgumentError("config.json: head_dim must be even for rotary embeddings");
  }
  ASSIGN_OR_RETURN(config.max_position_embeddings,
                   OptionalPositiveInt(json, "max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(config.rms_norm_eps, OptionalNumber(json, "rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(config.rope_theta, OptionalNumber(json, "rope_theta", 10000.0));
  if (config.rope_theta <= 0) {
    return absl::InvalidArgumentError("config.json: rope_theta must be positive");
  }
  ASSIGN_OR_RETURN(config.rope_scaling, ParseRopeScaling(json));
  config.tie_word_embeddings = OptionalBool(json, "tie_word_embeddings", false);
  config.attention_qkv_bias = is_qwen2 || OptionalBool(json, "attention_bias", false);
  config.attention_output_bias = !is_qwen2 && OptionalBool(json, "attention_bias", false);
  config.mlp_bias = OptionalBool(json, "mlp_bias", false);
  config.bos_token_ids = TokenIdList(json, "bos_token_id");
  config.eos_token_ids = TokenIdList(json, "eos_token_id");
  config.torch_dtype = json.value("torch_dtype", std::string(""));
  return config;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, common::ReadFileToString(path, 16u << 20));
  absl::StatusOr<ModelConfig> config = FromJson(text);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

std::string ModelConfig::ToJson() const {
  Json json;
  json["architectures"] = {architecture};
  json["model_type"] = architecture == "Qwen2ForCausalLM"     ? "qwen2"
                       : architecture == "MistralForCausalLM" ? "mistral"
                                                              : "llama";
  json["hidden_act"] = "silu";
  json["vocab_size"] = vocab_size;
  json["hidden_size"] = hidden_size;
  json["intermediate_size"] = intermediate_size;
  json["num_hidden_layers"] = num_hidden_layers;
  json["num_attention_heads"] = num_attention_heads;
  json["num_key_value_heads"] = num_key_value_heads;
  json["head_dim"] = head_dim;
  json["max_position_embeddings"] = max_position_embeddings;
  json["rms_norm_eps"] = rms_norm_eps;
  json["rope_theta"] = rope_theta;
  switch (rope_scaling.type) {
    case RopeScalingType::kNone:
      json["rope_scaling"] = nullptr;
      break;
    case RopeScalingType::kLinear:
      json["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
      break;
    case RopeScalingType::kLlama3:
      json["rope_scaling"] = {
          {"rope_type", "llama3"},
          {"factor", rope_scaling.factor},
          {"low_freq_factor", rope_scaling.low_freq_factor},
          {"high_freq_factor", rope_scaling.high_freq_factor},
          {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
      break;
  }
  json["tie_word_embeddings"] = tie_word_embeddings;
  if (architecture != "Qwen2ForCausalLM") json["attention_bias"] = attention_qkv_bias;
  if (bos_token_ids.size() == 1) json["bos_token_id"] = bos_token_ids[0];
  if (eos_token_ids.size() == 1) json["eos_token_id"] = eos_token_ids[0];
  if (eos_token_ids.size() > 1) json["eos_token_id"] = eos_token_ids;
  json["torch_dtype"] = torch_dtype.empty() ? "float32" : torch_dtype;
  return json.dump(2) + "\n";
}

}  // namespace deltaserve::model
