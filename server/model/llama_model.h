// LlamaModel: the one implementation of the Llama-family forward pass (Llama, Mistral, Qwen2).
//
// Forward() runs a batch of token slices from several sequences: embeddings, projections and
// the MLP run once over all tokens of the batch; attention runs per sequence against that
// sequence's keys and values in the batch's KvArena, read and written through the sequence's
// block table (or, without one, causally within the slice: the training and full-recompute path). A ProjectionDeltaHook, when given, adds per-token low-rank deltas after
// every base projection: that is where variants enter.
//
// Thread-safety: weights are immutable after Load(); Forward() is const and may run from
// several threads, but each arena block must be used by one caller at a time. Forward()
// throws c10::Error on misuse; Run() converts that into a Status. Autograd follows the
// caller's mode (the engine runs under c10::InferenceMode; training does not).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/model/kv_arena.h"
#include "server/model/llama_weights.h"
#include "server/model/model_config.h"

namespace deltaserve::model {

// ProjectionDeltaHook: variants plug in here. AddDelta must add its delta for the tokens it
// covers into `output` ([tokens, out_features]) given the projection's `input`, in place:
// `output` may be a column range of a wider output (q/k/v, gate/up side by side) that the model reads later.
class ProjectionDeltaHook {
 public:
  virtual ~ProjectionDeltaHook() = default;
  virtual void AddDelta(int64_t layer, Projection projection, const at::Tensor& input,
                        at::Tensor& output) const = 0;
};

struct SequenceSlice {
  // Tokens of this sequence already in the arena: the slice's first position.
  int64_t start_position = 0;
  // New tokens of this sequence in the batch (consecutive in ForwardBatch::token_ids).
  int64_t length = 0;
  // The sequence's block table in ForwardBatch::kv_arena, covering at least start_position +
  // length positions; the slice's keys and values are written there. nullptr: no cache,
  // attention within the slice only (start_position must then be 0).
  const std::vector<int32_t>* kv_blocks = nullptr;
};

struct ForwardBatch {
  std::vector<int64_t> token_ids;
  std::vector<SequenceSlice> sequences;
  // Rows of token_ids whose logits are wanted; empty means every row.
  std::vector<int64_t> logit_rows;
  const ProjectionDeltaHook* deltas = nullptr;
  // Where the sequences with block tables keep their keys and values (AllocateKvArena).
  const KvArena* kv_arena = nullptr;
};

struct ModelOptions {
  // The compute dtype: activations, accumulation, norms, attention and the KV cache.
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  // The weight matrices' storage width (weight_matrix.h). nullopt ("auto"): computing in float32
  // on the CPU, each matrix keeps its checkpoint width (a bf16 checkpoint stays bf16); otherwise
  // the compute dtype. Widths other than the compute dtype are for the CPU only.
  std::optional<at::ScalarType> weight_dtype;
};

class LlamaModel {
 public:
  // Load reads config.json and the weights from a Hugging Face model directory.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const std::string& model_dir,
                                                          const ModelOptions& options);
  LlamaModel(ModelConfig config, LlamaWeights weights, const ModelOptions& options);

  // Forward returns float32 logits [logit rows, vocab].
  at::Tensor Forward(const ForwardBatch& batch) const;
  absl::StatusOr<at::Tensor> Run(const ForwardBatch& batch) const;

  // AllocateKvArena returns uninitialised KV memory of `blocks` blocks of `block_tokens`
  // positions, in the compute dtype on the model's device.
  KvArena AllocateKvArena(int64_t blocks, int64_t block_tokens) const;
  int64_t KvCacheBytesPerToken() const;
  int64_t WeightBytes() const;
  // DecodeStepWeightBytes: the weight bytes one decode step reads: all but the embedding table
  // (one row of it is gathered), unless it is also the LM head.
  int64_t DecodeStepWeightBytes() const;

  const ModelConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return weights_; }
  at::ScalarType dtype() const { return options_.dtype; }
  // The storage width of the weight matrices, or nullopt when they differ (auto width over a
  // checkpoint of mixed widths).
  std::optional<at::ScalarType> weight_width() const;
  at::Device device() const { return options_.device; }

 private:
  // AttendAll: the attention output [tokens, heads * head_dim] of every slice of the batch in
  // layer `layer`, given the batch's rotated queries [tokens, heads, head_dim] and its new keys
  // and values [tokens, kv_heads, head_dim], which it first writes into the slices' blocks.
  at::Tensor AttendAll(const ForwardBatch& batch, int64_t layer, const at::Tensor& query, const at::Tensor& key,
                       const at::Tensor& value) const;
  // Attend: the attention output [n, heads * head_dim] of the slice's queries [n, heads, head_dim].
  at::Tensor Attend(const SequenceSlice& sequence, const at::Tensor& query, const at::Tensor& keys,
                    const at::Tensor& values) const;

  ModelConfig config_;
  LlamaWeights weights_;
  ModelOptions options_;
  at::Tensor inverse_frequencies_;  // [head_dim/2] double, CPU
};

// ParseDevice accepts "cpu", "cuda", "cuda:N" and checks the device exists.
absl::StatusOr<at::Device> ParseDevice(const std::string& text);
// ParseDtype accepts float32, float16, bfloat16 (and fp32/fp16/bf16).
absl::StatusOr<at::ScalarType> ParseDtype(const std::string& text);

}  // namespace deltaserve::model
