#include "tools/gguf_export.h"

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/deltas/peft_adapter.h"
#include "server/model/llama_model.h"
#include "server/model/sentencepiece_bridge.h"
#include "tools/gguf_writer.h"

namespace deltaserve::tools {
namespace {

// GGUF token types (llama.cpp's llama_token_type).
enum : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUnused = 5, kByte = 6 };

// Hugging Face "rotate half" rows -> llama.cpp adjacent pairs, per head: rows (h, 2, d/2) become
// (h, d/2, 2).
at::Tensor PermuteForPairs(const at::Tensor& rows, int64_t heads) {
  const int64_t out = rows.size(0);
  return rows.reshape({heads, 2, out / heads / 2, rows.size(1)}).transpose(1, 2).reshape(rows.sizes()).contiguous();
}

absl::Status CheckExportable(const model::ModelConfig& config) {
  if (config.architecture != "LlamaForCausalLM" && config.architecture != "MistralForCausalLM") {
    return absl::UnimplementedError(absl::StrCat("GGUF export covers Llama and Mistral models, not ", config.architecture));
  }
  if (config.attention_qkv_bias || config.attention_output_bias || config.mlp_bias) {
    return absl::UnimplementedError("GGUF export covers models without projection biases");
  }
  if (config.rope_scaling.type != model::RopeScalingType::kNone) {
    return absl::UnimplementedError("GGUF export covers models without rope_scaling");
  }
  return absl::OkStatus();
}

// Name of a projection's weight in llama.cpp's tensor naming.
std::string GgufWeightName(int64_t layer, model::Projection projection) {
  static const char* const kNames[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  return absl::StrCat("blk.", layer, ".", kNames[static_cast<int>(projection)], ".weight");
}

// The token list has one entry per embedding row: a checkpoint whose embedding has more rows than
// its tokenizer has pieces gets unused "<pad_N>" entries, as llama.cpp needs.
void AddTokenizer(GgufWriter& writer, const model::sentencepiece_bridge::Processor& processor,
                  int64_t vocab_size) {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (int id = 0; id < processor.PieceSize(); ++id) {
    tokens.push_back(processor.IdToPiece(id));
    const bool special = processor.IsControl(id) || processor.IsUnknown(id);
    scores.push_back(special ? 0.0f : -static_cast<float>(id));
    types.push_back(processor.IsUnknown(id) ? kUnknown
                    : processor.IsControl(id) ? kControl
                    : processor.IsUnused(id)  ? kUnused
                    : processor.IsByte(id)    ? kByte
                                              : kNormal);
  }
  for (int64_t id = processor.PieceSize(); id < vocab_size; ++id) {
    tokens.push_back(absl::StrCat("<pad_", id, ">"));
    scores.push_back(-1e9f);
    types.push_back(kUnused);
  }
  writer.AddString("tokenizer.ggml.model", "llama");
  writer.AddStringArray("tokenizer.ggml.tokens", tokens);
  writer.AddFloat32Array("tokenizer.ggml.scores", scores);
  writer.AddInt32Array("tokenizer.ggml.token_type", types);
  if (processor.BosId() >= 0) writer.AddUint32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(processor.BosId()));
  if (processor.EosId() >= 0) writer.AddUint32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(processor.EosId()));
}

}  // namespace

absl::Status WriteGgufModel(const std::string& model_dir, const std::string& out_path,
                            GgufTensorType weight_type) {
  ASSIGN_OR_RETURN(std::unique_ptr<model::LlamaModel> llama, model::LlamaModel::Load(model_dir, {}));
  const model::ModelConfig& config = llama->config();
  RETURN_IF_ERROR(CheckExportable(config));
  std::string error;
  auto processor = model::sentencepiece_bridge::Processor::Load(common::JoinPath(model_dir, "tokenizer.model"), &error);
  if (processor == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("GGUF export needs a SentencePiece tokenizer.model: ", error));
  }
  GgufWriter writer;
  writer.AddString("general.architecture", "llama");
  writer.AddString("general.name", "deltaserve export");
  // llama.cpp's file types: all F32 0, mostly F16 1, mostly Q8_0 7.
  writer.AddUint32("general.file_type", weight_type == GgufTensorType::kF32    ? 0
                                        : weight_type == GgufTensorType::kF16 ? 1
                                                                               : 7);
  writer.AddUint32("llama.vocab_size", static_cast<uint32_t>(config.vocab_size));
  writer.AddUint32("llama.context_length", static_cast<uint32_t>(config.max_position_embeddings));
  writer.AddUint32("llama.embedding_length", static_cast<uint32_t>(config.hidden_size));
  writer.AddUint32("llama.block_count", static_cast<uint32_t>(config.num_hidden_layers));
  writer.AddUint32("llama.feed_forward_length", static_cast<uint32_t>(config.intermediate_size));
  writer.AddUint32("llama.attention.head_count", static_cast<uint32_t>(config.num_attention_heads));
  writer.AddUint32("llama.attention.head_count_kv", static_cast<uint32_t>(config.num_key_value_heads));
  writer.AddUint32("llama.attention.key_length", static_cast<uint32_t>(config.head_dim));
  writer.AddUint32("llama.attention.value_length", static_cast<uint32_t>(config.head_dim));
  writer.AddUint32("llama.rope.dimension_count", static_cast<uint32_t>(config.head_dim));
  writer.AddFloat32("llama.rope.freq_base", static_cast<float>(config.rope_theta));
  writer.AddFloat32("llama.attention.layer_norm_rms_epsilon", static_cast<float>(config.rms_norm_eps));
  AddTokenizer(writer, *processor, config.vocab_size);

  const model::LlamaWeights& weights = llama->weights();
  // Matrices at the asked width; norms stay float32, as llama.cpp expects.
  absl::Status added = absl::OkStatus();
  auto add = [&](const std::string& name, const at::Tensor& tensor, GgufTensorType type) {
    if (added.ok()) added = writer.AddTensor(name, tensor, type);
  };
  auto matrix = [&](const std::string& name, const at::Tensor& tensor) { add(name, tensor, weight_type); };
  auto norm = [&](const std::string& name, const at::Tensor& tensor) { add(name, tensor, GgufTensorType::kF32); };
  RETURN_IF_ERROR(common::CatchTorchErrors("GGUF export", [&] {
    matrix("token_embd.weight", weights.embed_tokens.Dense(at::kFloat));
    for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
      const model::LayerWeights& w = weights.layers[layer];
      norm(absl::StrCat("blk.", layer, ".attn_norm.weight"), w.input_norm);
      matrix(GgufWeightName(layer, model::Projection::kQuery),
             PermuteForPairs(w.q_proj.Dense(at::kFloat), config.num_attention_heads));
      matrix(GgufWeightName(layer, model::Projection::kKey),
             PermuteForPairs(w.k_proj.Dense(at::kFloat), config.num_key_value_heads));
      matrix(GgufWeightName(layer, model::Projection::kValue), w.v_proj.Dense(at::kFloat));
      matrix(GgufWeightName(layer, model::Projection::kOutput), w.o_proj.Dense(at::kFloat));
      norm(absl::StrCat("blk.", layer, ".ffn_norm.weight"), w.post_attention_norm);
      matrix(GgufWeightName(layer, model::Projection::kGate), w.gate_proj.Dense(at::kFloat));
      matrix(GgufWeightName(layer, model::Projection::kUp), w.up_proj.Dense(at::kFloat));
      matrix(GgufWeightName(layer, model::Projection::kDown), w.down_proj.Dense(at::kFloat));
    }
    norm("output_norm.weight", weights.final_norm);
    if (!config.tie_word_embeddings) matrix("output.weight", weights.lm_head.Dense(at::kFloat));
  }));
  RETURN_IF_ERROR(added);
  return writer.Write(out_path);
}

absl::Status WriteGgufLora(const std::string& model_dir, const std::string& adapter_dir,
                           const std::string& out_path) {
  ASSIGN_OR_RETURN(model::ModelConfig config,
                   model::ModelConfig::FromFile(common::JoinPath(model_dir, "config.json")));
  RETURN_IF_ERROR(CheckExportable(config));
  ASSIGN_OR_RETURN(deltas::PeftAdapter adapter, deltas::ReadPeftAdapter(adapter_dir, config, at::kFloat, at::kCPU));
  GgufWriter writer;
  writer.AddString("general.architecture", "llama");
  writer.AddString("general.type", "adapter");
  writer.AddString("adapter.type", "lora");
  writer.AddFloat32("adapter.lora.alpha", 0.0f);  // 0: B A applied as written (scales are in B)
  absl::Status laid_out = common::CatchTorchErrors("GGUF LoRA export", [&] {
    for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
      for (int p = 0; p < deltas::kProjectionCount; ++p) {
        const auto projection = static_cast<model::Projection>(p);
        const std::vector<deltas::LowRankFactor>& factors = adapter.deltas.Factors(layer, projection);
        if (factors.empty()) continue;
        std::vector<at::Tensor> a, b;
        for (const deltas::LowRankFactor& factor : factors) {
          a.push_back(factor.a);
          b.push_back(factor.b * factor.scale);
        }
        at::Tensor stacked_b = at::cat(b, 1);
        if (projection == model::Projection::kQuery) stacked_b = PermuteForPairs(stacked_b, config.num_attention_heads);
        if (projection == model::Projection::kKey) stacked_b = PermuteForPairs(stacked_b, config.num_key_value_heads);
        const std::string name = GgufWeightName(layer, projection);
        (void)writer.AddTensor(name + ".lora_a", at::cat(a, 0));  // F32: cannot fail
        (void)writer.AddTensor(name + ".lora_b", stacked_b);
      }
    }
  });
  RETURN_IF_ERROR(laid_out);
  return writer.Write(out_path);
}

}  // namespace deltaserve::tools
