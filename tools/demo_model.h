// WriteDemoModel writes a small deterministic Llama-architecture model in the Hugging Face
// layout (config.json, model.safetensors, tokenizer.model, tokenizer_config.json,
// generation_config.json, with a chat template) to a directory. Weights come from a fixed-seed generator and the
// SentencePiece tokenizer is trained on a generated corpus, so the same options always give
// the same files. Used by the deltaserve-make-demo tool, the quickstart, tests and benchmarks.
// Blocking; the directory is created if missing and its files are overwritten.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/model/model_config.h"

namespace deltaserve::tools {

struct DemoModelOptions {
  // "tiny" (unit tests, ~100k parameters), "small" (~3M), "medium" (~40M, benchmarks), or the
  // layer shapes of real models for benchmarks whose figures depend on proportions:
  // "llama2-7b-shape" (hidden 4096, intermediate 11008, 32 heads, vocab 32000, 32 layers) and
  // "llama3-8b-shape" (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, vocab 128256,
  // 32 layers). Real shapes keep their vocabulary size; the tokenizer covers the first pieces.
  std::string size = "tiny";
  // Layers, when > 0, instead of the size's own (e.g. 2 layers of 7B shapes).
  int64_t layers = 0;
  // Stored dtype of the weights: float32, float16 or bfloat16.
  at::ScalarType dtype = at::kFloat;
  // LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM (q/k/v biases).
  std::string architecture = "LlamaForCausalLM";
  bool tie_word_embeddings = false;
  model::RopeScaling rope_scaling;
  uint64_t seed = 1234;
  // When set, copies this directory's tokenizer.model instead of training one (faster tests).
  std::string tokenizer_from;
};

// DemoModelConfig returns the architecture WriteDemoModel uses for a size (vocab_size is a
// placeholder until the tokenizer is trained).
absl::StatusOr<model::ModelConfig> DemoModelConfig(const DemoModelOptions& options);

absl::Status WriteDemoModel(const std::string& directory, const DemoModelOptions& options);

// The chat template the demo model's tokenizer_config.json carries: <s>, then [INST] user
// [/INST] turns, assistant turns followed by </s>, system prompts as "<<SYS>> ... <</SYS>>\n".
inline constexpr const char* kDemoChatTemplate =
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>> ' + message['content'] | trim + ' <</SYS>>\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + eos_token }}"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}{% endfor %}";

// WriteDemoAdapters writes `count` deterministic random PEFT LoRA adapters of rank `rank` for
// the model in `model_directory`, targeting q/k/v/o/gate/up/down, into
// adapters_directory/demo-NNN (NNN from 000). Adapter i uses seed base_seed + i.
absl::Status WriteDemoAdapters(const std::string& model_directory, const std::string& adapters_directory,
                               int count, int rank, uint64_t base_seed = 777);

}  // namespace deltaserve::tools
