// GGUF export of a Llama-architecture model and of PEFT LoRA adapters, for running the same
// weights in llama.cpp (bench/run_llama_cpp.sh compares the two engines side by side).
//
// WriteGgufModel: config.json + weights + SentencePiece tokenizer.model -> one GGUF file whose
// matrices are F32, F16 or Q8_0 (norms F32)
// (architecture "llama": Llama and Mistral layouts without biases and without rope scaling; others
// are refused with the reason). llama.cpp's "llama" graph rotates adjacent pairs where Hugging
// Face rotates halves, so the rows of q_proj and k_proj are permuted per head to match, as
// llama.cpp's own converter does. Token scores are not exposed by the SentencePiece bridge and
// are written as -id (a rank order): llama.cpp's own tokenization of text may differ from the
// model's, so compare engines on token ids, not on text.
//
// WriteGgufLora: an adapter directory -> a GGUF LoRA adapter (general.type "adapter"), each
// module's factors concatenated along the rank with their scales folded into B and
// adapter.lora.alpha 0 (llama.cpp then applies B A as written); B rows of q/k permuted as above.
// Blocking (disk).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "tools/gguf_writer.h"

namespace deltaserve::tools {

absl::Status WriteGgufModel(const std::string& model_dir, const std::string& out_path,
                            GgufTensorType weight_type = GgufTensorType::kF32);
absl::Status WriteGgufLora(const std::string& model_dir, const std::string& adapter_dir,
                           const std::string& out_path);

}  // namespace deltaserve::tools
