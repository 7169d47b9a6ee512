#include "server/deltas/peft_adapter_config.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/bounded_regex.h"
#include "server/common/json_limits.h"

namespace deltaserve::deltas {
namespace {

using Json = nlohmann::ordered_json;

// PEFT matches a pattern key against a module name as the regex (.*\.)?key$; a key that is not
// a valid pattern matches only itself.
bool PatternMatches(const std::string& key, const std::string& module_name) {
  auto regex = common::BoundedRegex::Compile("(.*\\.)?(?:" + key + ")");
  return regex.ok() ? regex->FullMatch(module_name) : key == module_name;
}

absl::Status Invalid(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

// ParseConfig does FromJson's work; it may throw nlohmann's exceptions on values of the wrong
// type, which FromJson turns into INVALID_ARGUMENT.
absl::StatusOr<PeftAdapterConfig> ParseConfig(const std::string& text) {
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
  // Flags are booleans or absent (null counts as absent, as PEFT writes them).
  auto flag = [&](const char* key, bool* value) -> absl::Status {
    *value = false;
    if (!json.contains(key) || json[key].is_null()) return absl::OkStatus();
    if (!json[key].is_boolean()) return Invalid(where, absl::StrCat("\"", key, "\" must be true or false"));
    *value = json[key].get<bool>();
    return absl::OkStatus();
  };
  bool use_dora = false, fan_in_fan_out = false;
  for (auto [key, value] : {std::pair{"use_rslora", &config.use_rslora}, std::pair{"use_dora", &use_dora},
                            std::pair{"fan_in_fan_out", &fan_in_fan_out}}) {
    if (absl::Status valid = flag(key, value); !valid.ok()) return valid;
  }
  if (use_dora) return Invalid(where, "DoRA adapters (use_dora) are not supported");
  if (fan_in_fan_out) {
    return Invalid(where, "fan_in_fan_out is for Conv1D models (GPT-2); Llama-family projections are Linear");
  }
  const std::string bias = json.contains("bias") && json["bias"].is_string() ? json["bias"].get<std::string>() : "none";
  if (bias != "none") return Invalid(where, absl::StrCat("bias \"", bias, "\" is not supported (only \"none\")"));
  if (json.contains("modules_to_save") && !json["modules_to_save"].is_null() &&
      !(json["modules_to_save"].is_array() && json["modules_to_save"].empty())) {
    return Invalid(where, "modules_to_save (fully trained modules) is not supported: deltas must be low-rank");
  }
  const Json& targets = json["target_modules"];
  if (targets.is_string() && !targets.get<std::string>().empty()) {  // "" would target nothing
    config.target_modules_regex = targets.get<std::string>();
    if (auto compiled = common::BoundedRegex::Compile(config.target_modules_regex); !compiled.ok()) {
      return Invalid(where, absl::StrCat("the target_modules regex is refused: ", compiled.status().message()));
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
      if (pattern.size() > common::BoundedRegex::kMaxPatternBytes) {
        return Invalid(where, absl::StrCat(key, " has a pattern longer than ", common::BoundedRegex::kMaxPatternBytes,
                                           " bytes"));
      }
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

}  // namespace

absl::StatusOr<PeftAdapterConfig> PeftAdapterConfig::FromJson(const std::string& text) {
  try {
    return ParseConfig(text);
  } catch (const nlohmann::json::exception& error) {
    return Invalid("adapter_config.json", absl::StrCat("a value of the wrong type: ", error.what()));
  }
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
    auto regex = common::BoundedRegex::Compile(target_modules_regex);
    return regex.ok() && regex->FullMatch(module_name);
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

}  // namespace deltaserve::deltas
