#include "server/deltas/peft_adapter.h"

#include <sys/stat.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/common/file_util.h"
#include "server/common/json_limits.h"
#include "server/common/status_macros.h"
#include "server/model/safetensors_file.h"
#include "server/model/safetensors_tensor.h"

namespace deltaserve::deltas {
namespace {

using Json = nlohmann::ordered_json;
using model::Projection;

constexpr Projection kProjections[] = {Projection::kQuery, Projection::kKey,  Projection::kValue,
                                       Projection::kOutput, Projection::kGate, Projection::kUp,
                                       Projection::kDown};

// PEFT matches a pattern key against a module name as the regex (.*\.)?key$.
bool PatternMatches(const std::string& key, const std::string& module_name) {
  try {
    return std::regex_match(module_name, std::regex("(.*\\.)?" + key));
  } catch (const std::regex_error&) {
    return key == module_name;
  }
}

absl::Status Invalid(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

std::string TensorName(int64_t layer, Projection projection, char which) {
  return absl::StrCat("base_model.model.", ModuleName(layer, projection), ".lora_", std::string(1, which),
                      ".weight");
}

}  // namespace

std::string ModuleName(int64_t layer, Projection projection) {
  return absl::StrCat("model.layers.", layer, ".", ProjectionParent(projection), ".",
                      ProjectionName(projection));
}

absl::StatusOr<PeftAdapterConfig> PeftAdapterConfig::FromJson(const std::string& text) {
  const std::string where = "adapter_config.json";
  // A real adapter_config.json nests 3 levels (rank_pattern and the like); 16 is plenty.
  if (!common::JsonNestingWithin(text, 16)) return Invalid(where, "the JSON is nested too deeply");
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return Invalid(where, "not a JSON object");
  PeftAdapterConfig config;
  if (json.contains("peft_type") && json["peft_type"] != "LORA") {
    return Invalid(where, absl::StrCat("peft_type ", json["peft_type"].dump(), " is not supported (only LORA)"));
  }
  if (!json.contains("r") || !json["r"].is_number_integer() || json["r"].get<int64_t>() <= 0) {
    return Invalid(where, "\"r\" must be a positive integer");
  }
  config.r = json["r"].get<int64_t>();
  if (json.contains("lora_alpha")) {
    if (!json["lora_alpha"].is_number()) return Invalid(where, "\"lora_alpha\" must be a number");
    config.lora_alpha = json["lora_alpha"].get<double>();
  }
  config.use_rslora = json.value("use_rslora", false);
  if (json.value("use_dora", false)) return Invalid(where, "DoRA adapters (use_dora) are not supported");
  if (json.value("fan_in_fan_out", false)) {
    return Invalid(where, "fan_in_fan_out is for Conv1D models (GPT-2); Llama-family projections are Linear");
  }
  const std::string bias = json.contains("bias") && json["bias"].is_string() ? json["bias"].get<std::string>() : "none";
  if (bias != "none") return Invalid(where, absl::StrCat("bias \"", bias, "\" is not supported (only \"none\")"));
  if (json.contains("modules_to_save") && !json["modules_to_save"].is_null() &&
      !(json["modules_to_save"].is_array() && json["modules_to_save"].empty())) {
    return Invalid(where, "modules_to_save (fully trained modules) is not supported: deltas must be low-rank");
  }
  const Json& targets = json["target_modules"];
  if (targets.is_string()) {
    config.target_modules_regex = targets.get<std::string>();
    try {
      std::regex check(config.target_modules_regex);
    } catch (const std::regex_error& error) {
      return Invalid(where, absl::StrCat("target_modules regex does not compile: ", error.what()));
    }
  } else if (targets.is_array() && !targets.empty()) {
    for (const Json& target : targets) {
      if (!target.is_string()) return Invalid(where, "target_modules must list strings");
      config.target_modules.push_back(target.get<std::string>());
    }
  } else {
    return Invalid(where, "\"target_modules\" must be a non-empty list or a regex string");
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!json.contains(key) || json[key].is_null()) continue;
    if (!json[key].is_object()) return Invalid(where, absl::StrCat("\"", key, "\" must be an object"));
    for (auto& [pattern, value] : json[key].items()) {
      if (std::string(key) == "rank_pattern") {
        if (!value.is_number_integer() || value.get<int64_t>() <= 0) {
          return Invalid(where, absl::StrCat("rank_pattern[\"", pattern, "\"] must be a positive integer"));
        }
        config.rank_pattern.push_back({pattern, value.get<int64_t>()});
      } else {
        if (!value.is_number()) return Invalid(where, absl::StrCat("alpha_pattern[\"", pattern, "\"] must be a number"));
        config.alpha_pattern.push_back({pattern, value.get<double>()});
      }
    }
  }
  if (json.contains("base_model_name_or_path") && json["base_model_name_or_path"].is_string()) {
    config.base_model_name_or_path = json["base_model_name_or_path"].get<std::string>();
  }
  return config;
}

std::string PeftAdapterConfig::ToJson() const {
  Json json;
  json["peft_type"] = "LORA";
  json["task_type"] = "CAUSAL_LM";
  json["base_model_name_or_path"] = base_model_name_or_path;
  json["r"] = r;
  json["lora_alpha"] = lora_alpha;
  json["use_rslora"] = use_rslora;
  if (target_modules_regex.empty()) {
    json["target_modules"] = target_modules;
  } else {
    json["target_modules"] = target_modules_regex;
  }
  json["rank_pattern"] = Json::object();
  for (const auto& [pattern, rank] : rank_pattern) json["rank_pattern"][pattern] = rank;
  json["alpha_pattern"] = Json::object();
  for (const auto& [pattern, alpha] : alpha_pattern) json["alpha_pattern"][pattern] = alpha;
  json["lora_dropout"] = 0.0;
  json["fan_in_fan_out"] = false;
  json["bias"] = "none";
  json["use_dora"] = false;
  json["modules_to_save"] = nullptr;
  return json.dump(2) + "\n";
}

bool PeftAdapterConfig::Targets(const std::string& module_name) const {
  if (!target_modules_regex.empty()) {
    return std::regex_match(module_name, std::regex(target_modules_regex));
  }
  for (const std::string& target : target_modules) {
    if (module_name == target ||
        (module_name.size() > target.size() &&
         module_name.compare(module_name.size() - target.size() - 1, target.size() + 1, "." + target) == 0)) {
      return true;
    }
  }
  return false;
}

int64_t PeftAdapterConfig::RankFor(const std::string& module_name) const {
  for (const auto& [pattern, rank] : rank_pattern) {
    if (PatternMatches(pattern, module_name)) return rank;
  }
  return r;
}

double PeftAdapterConfig::AlphaFor(const std::string& module_name) const {
  for (const auto& [pattern, alpha] : alpha_pattern) {
    if (PatternMatches(pattern, module_name)) return alpha;
  }
  return lora_alpha;
}

double PeftAdapterConfig::ScaleFor(const std::string& module_name) const {
  const double rank = static_cast<double>(RankFor(module_name));
  return AlphaFor(module_name) / (use_rslora ? std::sqrt(rank) : rank);
}

absl::StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& directory,
                                            const model::ModelConfig& base, at::ScalarType dtype,
                                            const at::Device& device) {
  const std::string weights_path = common::JoinPath(directory, "adapter_model.safetensors");
  if (!common::PathExists(weights_path)) {
    if (common::PathExists(common::JoinPath(directory, "adapter_model.bin"))) {
      return absl::InvalidArgumentError(absl::StrCat(
          directory, ": adapter_model.bin is a pickle file and is never loaded; convert the adapter "
                     "to adapter_model.safetensors"));
    }
    return absl::NotFoundError(absl::StrCat(directory, " has no adapter_model.safetensors"));
  }
  ASSIGN_OR_RETURN(std::string config_text,
                   common::ReadFileToString(common::JoinPath(directory, "adapter_config.json"), 1u << 20));
  ASSIGN_OR_RETURN(PeftAdapterConfig config, PeftAdapterConfig::FromJson(config_text));
  ASSIGN_OR_RETURN(model::SafetensorsFile file, model::SafetensorsFile::Open(weights_path));

  static const std::regex kName(
      R"(base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.lora_(A|B)\.weight)");
  struct Pair {
    const model::StoredTensor* a = nullptr;
    const model::StoredTensor* b = nullptr;
  };
  std::map<std::pair<int64_t, int>, Pair> modules;
  for (const auto& [name, stored] : file.tensors()) {
    std::smatch match;
    if (!std::regex_match(name, match, kName)) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, " is not a LoRA factor of a q/k/v/o/gate/up/down projection"));
    }
    const int64_t layer = std::stoll(match[1]);
    if (layer >= base.num_hidden_layers) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, " is for layer ", layer, " but the base model has ",
                                                base.num_hidden_layers, " layers"));
    }
    Projection projection = Projection::kQuery;
    for (Projection candidate : kProjections) {
      if (match[3] == ProjectionName(candidate)) projection = candidate;
    }
    if (match[2] != ProjectionParent(projection)) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, ": ", ProjectionName(projection), " is not under ", match[2].str()));
    }
    if (!config.Targets(ModuleName(layer, projection))) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, " is for module ", ModuleName(layer, projection),
                                                ", which adapter_config.json's target_modules does not include"));
    }
    if (stored.dtype != model::StoredDtype::kF32 && stored.dtype != model::StoredDtype::kF16 &&
        stored.dtype != model::StoredDtype::kBF16) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, " has dtype ", model::DtypeName(stored.dtype),
                                                "; LoRA factors must be F32, F16 or BF16"));
    }
    Pair& pair = modules[{layer, static_cast<int>(projection)}];
    (match[4] == "A" ? pair.a : pair.b) = &stored;
  }
  if (modules.empty()) return Invalid(weights_path, "the adapter has no LoRA tensors");

  PeftAdapter adapter{config, DeltaSet(base.num_hidden_layers)};
  for (const auto& [key, pair] : modules) {
    const auto [layer, projection_index] = key;
    const Projection projection = static_cast<Projection>(projection_index);
    const std::string module = ModuleName(layer, projection);
    if (pair.a == nullptr || pair.b == nullptr) {
      return Invalid(weights_path, absl::StrCat("tensor ", TensorName(layer, projection, pair.a == nullptr ? 'A' : 'B'),
                                                " is missing (its pair is present)"));
    }
    const int64_t rank = config.RankFor(module);
    const auto [out_features, in_features] = ProjectionShape(base, projection);
    const std::vector<int64_t> a_shape = {rank, in_features};
    const std::vector<int64_t> b_shape = {out_features, rank};
    if (pair.a->shape != a_shape) {
      return Invalid(weights_path, absl::StrCat("tensor ", TensorName(layer, projection, 'A'), " has shape [",
                                                absl::StrJoin(pair.a->shape, ", "), "], expected [",
                                                absl::StrJoin(a_shape, ", "), "] (rank ", rank, ")"));
    }
    if (pair.b->shape != b_shape) {
      return Invalid(weights_path, absl::StrCat("tensor ", TensorName(layer, projection, 'B'), " has shape [",
                                                absl::StrJoin(pair.b->shape, ", "), "], expected [",
                                                absl::StrJoin(b_shape, ", "), "] (rank ", rank, ")"));
    }
    ASSIGN_OR_RETURN(at::Tensor a, model::ToTensor(*pair.a, dtype, device));
    ASSIGN_OR_RETURN(at::Tensor b, model::ToTensor(*pair.b, dtype, device));
    adapter.deltas.Add(layer, projection, {a, b, config.ScaleFor(module)});
  }
  return adapter;
}

absl::Status WritePeftAdapter(const std::string& directory, const PeftAdapterConfig& base_config,
                              const DeltaSet& deltas) {
  PeftAdapterConfig config = base_config;
  config.target_modules.clear();
  config.target_modules_regex.clear();
  config.rank_pattern.clear();
  config.alpha_pattern.clear();
  std::set<std::string> kinds;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (int64_t layer = 0; layer < deltas.num_layers(); ++layer) {
    for (Projection projection : kProjections) {
      const std::vector<LowRankFactor>& factors = deltas.Factors(layer, projection);
      if (factors.empty()) continue;
      const std::string module = ModuleName(layer, projection);
      kinds.insert(ProjectionName(projection));
      at::Tensor a, b;
      int64_t rank = 0;
      double scale = 1.0;
      if (factors.size() == 1) {
        a = factors[0].a;
        b = factors[0].b;
        rank = factors[0].rank();
        scale = factors[0].scale;
      } else {
        std::vector<at::Tensor> as, bs;
        for (const LowRankFactor& factor : factors) {
          as.push_back(factor.a);
          bs.push_back(factor.b * factor.scale);
          rank += factor.rank();
        }
        a = at::cat(as, 0);
        b = at::cat(bs, 1);
      }
      const double alpha = scale * (config.use_rslora ? std::sqrt(static_cast<double>(rank)) : rank);
      if (rank != config.r) config.rank_pattern.push_back({module, rank});
      if (alpha != config.lora_alpha) config.alpha_pattern.push_back({module, alpha});
      tensors.push_back({"base_model.model." + module + ".lora_A.weight", a});
      tensors.push_back({"base_model.model." + module + ".lora_B.weight", b});
    }
  }
  if (tensors.empty()) return absl::InvalidArgumentError("the DeltaSet is empty: nothing to write");
  config.target_modules.assign(kinds.begin(), kinds.end());
  ::mkdir(directory.c_str(), 0755);
  RETURN_IF_ERROR(model::WriteSafetensors(common::JoinPath(directory, "adapter_model.safetensors"), tensors,
                                          {{"format", "pt"}}));
  return common::WriteFileAtomically(common::JoinPath(directory, "adapter_config.json"), config.ToJson());
}

}  // namespace deltaserve::deltas
