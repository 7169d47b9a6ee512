// Hugging Face PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors.
//
// ReadPeftAdapter validates an adapter directory against the base model's config: every tensor
// must be base_model.model.model.layers.N.{self_attn,mlp}.<proj>.lora_{A,B}.weight of a
// targeted module with a layer below the base's depth and the shapes the base and the module's
// rank imply; errors name the offending tensor or field. Pickled adapter_model.bin files are
// refused, never read. adapter_config.json is read by PeftAdapterConfig (peft_adapter_config.h),
// which also gives each module's scale.
//
// Every factor read must be finite and every module's scale finite and at most kMaxDeltaScale
// in size (CheckFactors): an adapter with a NaN in lora_B or a lora_alpha of 1e308 would serve
// NaN logits. Jobs check their results the same way before publishing them.
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

// The largest |scale| (PEFT's lora_alpha / r, or / sqrt(r) with rsLoRA) a module may have. Real
// adapters use about 0.1 to 16; beyond this bound a delta overwhelms the weight it adapts.
inline constexpr double kMaxDeltaScale = 1000.0;
// The largest bound on one entry of a module's delta a factor may have: |scale| times the sum,
// over its rank components, of the largest entry of the component's column of B times that of
// its row of A (a scale folded into B, as merges do, counts here). Real adapters stay far below;
// base weights are of order 1.
inline constexpr double kMaxDeltaEntry = 1e4;

// CheckFactors: INVALID_ARGUMENT naming the tensor (e.g. "base_model.model.model.layers.3.
// self_attn.q_proj.lora_B.weight has non-finite values (NaN or infinity)") or the module whose
// scale is not finite or exceeds kMaxDeltaScale, or whose entries may exceed kMaxDeltaEntry;
// OK otherwise.
absl::Status CheckFactors(const DeltaSet& deltas);

absl::StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& directory,
                                            const model::ModelConfig& base, at::ScalarType dtype,
                                            const at::Device& device);

// `config` supplies r, lora_alpha, use_rslora and base_model_name_or_path; target modules and
// patterns are derived from `deltas`.
absl::Status WritePeftAdapter(const std::string& directory, const PeftAdapterConfig& config,
                              const DeltaSet& deltas);

}  // namespace deltaserve::deltas
