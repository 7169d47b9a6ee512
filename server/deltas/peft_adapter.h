// Hugging Face PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors.
//
// ReadPeftAdapter validates an adapter directory against the base model's config: every tensor
// must be base_model.model.model.layers.N.{self_attn,mlp}.<proj>.lora_{A,B}.weight of a
// targeted module with a layer below the base's depth and the shapes the base and the module's
// rank imply; errors name the offending tensor or field. Pickled adapter_model.bin files are
// refused, never read. adapter_config.json is read by PeftAdapterConfig (peft_adapter_config.h),
// which also gives each module's scale.
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
#include "server/deltas/peft_adapter_config.h"
#include "server/model/model_config.h"

namespace deltaserve::deltas {

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
