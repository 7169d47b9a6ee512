// PeftAdapterConfig: a Hugging Face PEFT LoRA adapter_config.json, parsed strictly (FromJson:
// INVALID_ARGUMENT naming the field; a LORA of Linear modules without bias, DoRA or fully
// trained modules; JSON depth and pattern sizes bounded, patterns matched with a bounded number
// of steps: common/bounded_regex.h) and written back (ToJson, which
// FromJson reads to the same config). The scale of a module is alpha / rank (alpha / sqrt(rank)
// with rsLoRA), with rank_pattern / alpha_pattern overrides matched as PEFT does (the key equals
// the module name or a dotted suffix of it, as a regex). No libtorch here.
//   ASSIGN_OR_RETURN(PeftAdapterConfig config, PeftAdapterConfig::FromJson(text));
//   double scale = config.ScaleFor("model.layers.3.self_attn.q_proj");
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace deltaserve::deltas {

struct PeftAdapterConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  // Either a list of module names (matching a module whose name is it or ends with "." + it),
  // or, when target_modules_regex is set, a regex that must match the whole module name.
  std::vector<std::string> target_modules;
  std::string target_modules_regex;
  std::vector<std::pair<std::string, int64_t>> rank_pattern;  // in file order
  std::vector<std::pair<std::string, double>> alpha_pattern;
  std::string base_model_name_or_path;

  static absl::StatusOr<PeftAdapterConfig> FromJson(const std::string& text);
  std::string ToJson() const;
  // Module names look like "model.layers.3.self_attn.q_proj".
  bool Targets(const std::string& module_name) const;
  int64_t RankFor(const std::string& module_name) const;
  double AlphaFor(const std::string& module_name) const;
  double ScaleFor(const std::string& module_name) const;
};

}  // namespace deltaserve::deltas
