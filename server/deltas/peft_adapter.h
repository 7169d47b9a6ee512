// Hugging Face PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors.
//
// ReadPeftAdapter validates an adapter directory against the base model's config: every tensor
// must be base_model.model.model.layers.N.{self_attn,mlp}.<proj>.lora_{A,B}.weight of a
// targeted module with a layer below the base's depth and the shapes the base and the module's
// rank imply; errors name the offending tensor or field. Pickled adapter_model.bin files are
// refused, never read. The scale of a module is alpha / rank (alpha / sqrt(rank) with rsLoRA),
// with rank_pattern / alpha_pattern overrides matched as PEFT does (key equals the module name
// or a dotted suffix of it, as a regex).
//
// WritePeftAdapter writes a DeltaSet in the same format: modules with one factor are written
// as they are (bit-identical on read), their scales recorded through alpha_pattern /
// rank_pattern where they differ from the defaults; modules with several factors are
// concatenated into one (scales folded into B). Writes go to `directory` (created), each file
// atomically. Blocking.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"
#include "server/model/model_config.h"

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

struct PeftAdapter {
  PeftAdapterConfig config;
  DeltaSet deltas;
};

// ModuleName(3, kQuery) == "model.layers.3.self_attn.q_proj".
std::string ModuleName(int64_t layer, model::Projection projection);

absl::StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& directory,
                                            const model::ModelConfig& base, at::ScalarType dtype,
                                            const at::Device& device);

// `config` supplies r, lora_alpha, use_rslora and base_model_name_or_path; target modules and
// patterns are derived from `deltas`.
absl::Status WritePeftAdapter(const std::string& directory, const PeftAdapterConfig& config,
                              const DeltaSet& deltas);

}  // namespace deltaserve::deltas
