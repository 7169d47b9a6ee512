// Fuzzes adapter_config.json parsing: any text is either refused with INVALID_ARGUMENT or gives
// a config whose ToJson reads back to the same config, and whose per-module rank and scale can
// be asked for; never a crash, an exception or a hang.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "server/deltas/peft_adapter_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using deltaserve::deltas::PeftAdapterConfig;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = PeftAdapterConfig::FromJson(text);
  if (!config.ok()) {
    if (config.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  auto again = PeftAdapterConfig::FromJson(config->ToJson());
  if (!again.ok() || again->r != config->r || again->target_modules != config->target_modules ||
      again->target_modules_regex != config->target_modules_regex || again->rank_pattern != config->rank_pattern) {
    std::abort();
  }
  for (const char* module : {"model.layers.0.self_attn.q_proj", "model.layers.11.mlp.down_proj"}) {
    (void)config->Targets(module);
    if (config->RankFor(module) <= 0) std::abort();
    (void)config->ScaleFor(module);
  }
  return 0;
}
