#include "server/model/llama_model.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/model/cpu_attention.h"
#include "server/model/cpu_inference_kernels.h"
#include "server/model/cpu_linear.h"
#include "server/model/rope.h"

namespace deltaserve::model {
namespace {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (cpu_kernels::Applies({&x, &weight})) return cpu_kernels::RmsNorm(x, weight, eps);
  at::Tensor as_float = x.to(at::kFloat);
  at::Tensor variance = as_float.pow(2).mean(-1, /*keepdim=*/true);
  return (as_float * at::rsqrt(variance + eps)).to(x.scalar_type()) * weight;
}

// Elsewhere on the CPU (outside inference mode, other dtypes), rows up to which Linear uses one
// matrix-vector product per row: OpenBLAS's GEMM packs the whole weight matrix on every call,
// which for a few rows costs more than streaming the weights once per row through GEMV. Engine
// decode tokens/s on the medium demo model (2 threads, two alternating runs each), GEMV per
// row vs GEMM: 4 rows 243, 230 vs 201, 212; 8 rows 272, 256 vs 330, 344.
constexpr int64_t kMatrixVectorRows = 4;

// UsesCpuKernel: float32 CPU operands under inference mode that cpu_kernels::CpuLinear reads
// (every weight width, any number of rows). Against OpenBLAS (Debian's, through at::linear),
// weight products of the medium demo model (2 threads): a decode step of 1 row 3.73 ms vs GEMV
// per row 4.39, 32 rows 13.84 vs GEMM 20.97; a 2,048-token prompt chunk: see cpu_linear.h.
bool UsesCpuKernel(const at::Tensor& input, const WeightMatrix& weight, const at::Tensor& bias) {
  return cpu_kernels::Applies({&input}) &&
         (!bias.defined() || cpu_kernels::Applies({&bias})) && input.stride(1) == 1 &&
         weight.values.device().is_cpu() && weight.values.is_contiguous();
}

// Linear is y = x W^T + b for x [rows, in], through cpu_kernels::CpuLinear where it applies;
// elsewhere at::linear over the weights widened to the input's dtype (no copy when they already are).
at::Tensor Linear(const at::Tensor& input, const WeightMatrix& weight, const at::Tensor& bias) {
  if (UsesCpuKernel(input, weight, bias)) {
    return cpu_kernels::CpuLinear(input, weight, bias);
  }
  const at::Tensor dense = weight.Dense(input.scalar_type());
  const int64_t rows = input.size(0);
  if (rows > kMatrixVectorRows || input.device().type() != at::kCPU) {
    return at::linear(input, dense, bias);
  }
  std::vector<at::Tensor> outputs;
  outputs.reserve(rows);
  for (int64_t row = 0; row < rows; ++row) {
    outputs.push_back(bias.defined() ? at::addmv(bias, dense, input[row]) : at::mv(dense, input[row]));
  }
  return rows == 1 ? outputs[0].unsqueeze(0) : at::stack(outputs);
}

// AddResidual returns hidden + update as a new tensor (delta hooks may keep either), through
// cpu_inference_kernels.h where it applies, so that libtorch's OpenMP threads never wake between
// the kernels' own parallel sections (their spinning took 15% of a 512-token prompt's time).
at::Tensor AddResidual(const at::Tensor& hidden, const at::Tensor& update) {
  return cpu_kernels::Applies({&hidden, &update}) ? cpu_kernels::Add(hidden, update) : hidden + update;
}

// LinearGroup: the products of one input with several matrices (q, k, v; gate, up), side by
// side in one [rows, sum of outputs] tensor, so that their outputs are adjacent columns.
at::Tensor LinearGroup(const at::Tensor& input,
                       std::initializer_list<std::pair<const WeightMatrix*, const at::Tensor*>> parts) {
  bool kernel = true;
  int64_t total = 0;
  for (const auto& [weight, bias] : parts) {
    kernel = kernel && UsesCpuKernel(input, *weight, *bias);
    total += weight->rows();
  }
  if (kernel) {
    at::Tensor output = at::empty({input.size(0), total}, input.options());
    int64_t offset = 0;
    for (const auto& [weight, bias] : parts) {
      at::Tensor columns = output.narrow(1, offset, weight->rows());
      cpu_kernels::CpuLinearInto(input, *weight, *bias, columns);
      offset += weight->rows();
    }
    return output;
  }
  std::vector<at::Tensor> outputs;
  for (const auto& [weight, bias] : parts) outputs.push_back(Linear(input, *weight, *bias));
  return at::cat(outputs, 1);
}

at::Tensor Project(int64_t layer, Projection projection, const at::Tensor& input,
                   const WeightMatrix& weight, const at::Tensor& bias,
                   const ProjectionDeltaHook* deltas) {
  at::Tensor output = Linear(input, weight, bias);
  if (deltas != nullptr) deltas->AddDelta(layer, projection, input, output);
  return output;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const std::string& model_dir,
                                                             const ModelOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config,
                   ModelConfig::FromFile(common::JoinPath(model_dir, "config.json")));
  // Fail early, with a clear message, where this libtorch cannot compute in the dtype.
  absl::Status probe = common::CatchTorchErrors("probe", [&] {
    at::Tensor ones = at::ones({2, 2}, at::TensorOptions().dtype(options.dtype).device(options.device));
    at::Tensor result = at::linear(ones, ones) * at::rsqrt(ones.to(at::kFloat)).to(options.dtype);
    (void)at::softmax(result.to(at::kFloat), -1);
  });
  if (!probe.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dtype ", c10::toString(options.dtype), " cannot be computed on ", options.device.str(),
        " by this libtorch (", probe.message(), "); choose another --dtype (float32 or bfloat16 on CPU)"));
  }
  if (options.weight_dtype.has_value() && *options.weight_dtype != options.dtype &&
      !options.device.is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--weight-dtype ", WidthName(*options.weight_dtype), " differs from --dtype ",
        WidthName(options.dtype), ": on ", options.device.str(),
        " the weights are kept in the compute dtype (leave --weight-dtype at auto)"));
  }
  if (options.weight_dtype.has_value() && *options.weight_dtype != at::kFloat &&
      options.dtype != at::kFloat) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--weight-dtype ", WidthName(*options.weight_dtype), " with --dtype ", WidthName(options.dtype),
        ": narrow weights are widened into float32 arithmetic; use --dtype float32"));
  }
  WeightLoadOptions load_options;
  load_options.compute_dtype = options.dtype;
  load_options.device = options.device;
  load_options.weight_width = options.weight_dtype;
  if (!load_options.weight_width.has_value() &&
      !(options.device.is_cpu() && options.dtype == at::kFloat)) {
    load_options.weight_width = options.dtype;
  }
  ASSIGN_OR_RETURN(LlamaWeights weights, LoadLlamaWeights(model_dir, config, load_options));
  return std::make_unique<LlamaModel>(std::move(config), std::move(weights), options);
}

LlamaModel::LlamaModel(ModelConfig config, LlamaWeights weights, const ModelOptions& options)
    : config_(std::move(config)), weights_(std::move(weights)), options_(options) {
  std::vector<double> inverse = RopeInverseFrequencies(config_);
  inverse_frequencies_ =
      at::tensor(inverse, at::TensorOptions().dtype(at::kDouble)).to(options_.device);
}

int64_t LlamaModel::KvCacheBytesPerToken() const {
  return config_.num_hidden_layers * 2 * config_.num_key_value_heads * config_.head_dim *
         static_cast<int64_t>(c10::elementSize(options_.dtype));
}

int64_t LlamaModel::WeightBytes() const {
  int64_t bytes = weights_.embed_tokens.nbytes() + weights_.final_norm.nbytes();
  if (!config_.tie_word_embeddings) bytes += weights_.lm_head.nbytes();
  for (const LayerWeights& w : weights_.layers) {
    for (const WeightMatrix* m : {&w.q_proj, &w.k_proj, &w.v_proj, &w.o_proj, &w.gate_proj,
                                  &w.up_proj, &w.down_proj}) {
      bytes += m->nbytes();
    }
    for (const at::Tensor* t : {&w.input_norm, &w.q_bias, &w.k_bias, &w.v_bias, &w.o_bias,
                                &w.post_attention_norm, &w.gate_bias, &w.up_bias, &w.down_bias}) {
      if (t->defined()) bytes += t->nbytes();
    }
  }
  return bytes;
}

int64_t LlamaModel::DecodeStepWeightBytes() const {
  return WeightBytes() - (config_.tie_word_embeddings ? 0 : weights_.embed_tokens.nbytes());
}

std::optional<at::ScalarType> LlamaModel::weight_width() const {
  const at::ScalarType width = weights_.embed_tokens.width();
  auto same = [width](const WeightMatrix& m) { return m.width() == width; };
  if (!same(weights_.lm_head)) return std::nullopt;
  for (const LayerWeights& w : weights_.layers) {
    for (const WeightMatrix* m : {&w.q_proj, &w.k_proj, &w.v_proj, &w.o_proj, &w.gate_proj,
                                  &w.up_proj, &w.down_proj}) {
      if (!same(*m)) return std::nullopt;
    }
  }
  return width;
}

KvArena LlamaModel::AllocateKvArena(int64_t blocks, int64_t block_tokens) const {
  return KvArena(config_.num_hidden_layers, config_.num_key_value_heads, config_.head_dim, blocks, block_tokens,
                 at::TensorOptions().dtype(options_.dtype).device(options_.device));
}

at::Tensor LlamaModel::Attend(const SequenceSlice& sequence, const at::Tensor& query, const at::Tensor& keys,
                              const at::Tensor& values) const {
  // query [n, heads, head_dim]; keys/values [kv_heads, context, head_dim].
  const int64_t n = sequence.length;
  const int64_t heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t group = heads / kv_heads;
  const int64_t head_dim = config_.head_dim;
  const int64_t context = keys.size(1);
  // Grouped-query attention without repeating K/V: the `group` query heads that share a KV head
  // are stacked along the query axis of one batched matrix product.
  at::Tensor grouped = query.transpose(0, 1).reshape({kv_heads, group * n, head_dim});
  at::Tensor scores = at::matmul(grouped, keys.transpose(1, 2)).to(at::kFloat) *
                      (1.0 / std::sqrt(static_cast<double>(head_dim)));
  if (n > 1) {
    at::TensorOptions index_options = at::TensorOptions().dtype(at::kLong).device(query.device());
    at::Tensor key_positions = at::arange(context, index_options);
    at::Tensor query_positions = at::arange(n, index_options) + sequence.start_position;
    at::Tensor future = key_positions.unsqueeze(0) > query_positions.unsqueeze(1);  // [n, ctx]
    scores = scores.view({kv_heads, group, n, context})
                 .masked_fill(future, -std::numeric_limits<float>::infinity())
                 .view({kv_heads, group * n, context});
  }
  at::Tensor probabilities = at::softmax(scores, -1).to(values.scalar_type());
  at::Tensor output = at::matmul(probabilities, values);  // [kv_heads, group*n, head_dim]
  return output.view({heads, n, head_dim}).transpose(0, 1).reshape({n, heads * head_dim});
}

at::Tensor LlamaModel::AttendAll(const ForwardBatch& batch, int64_t layer, const at::Tensor& query,
                                 const at::Tensor& key, const at::Tensor& value) const {
  const int64_t tokens = query.size(0);
  // Every slice's new keys and values go into its blocks first.
  int64_t offset = 0;
  for (const SequenceSlice& sequence : batch.sequences) {
    if (sequence.kv_blocks != nullptr) {
      batch.kv_arena->Write(layer, *sequence.kv_blocks, sequence.start_position, key.narrow(0, offset, sequence.length),
                            value.narrow(0, offset, sequence.length));
    }
    offset += sequence.length;
  }
  const at::Tensor kv = batch.kv_arena != nullptr ? batch.kv_arena->Layer(layer) : at::Tensor();
  const bool paged_kernel = kv.defined() && cpu_kernels::Applies({&query, &kv});
  // On the CPU every slice with blocks attends in one kernel call straight from the arena, as one
  // run of query rows (causal: each sees the positions up to its own; cpu_attention.h). Otherwise
  // (other devices, training, slices without blocks) sequence by sequence through libtorch, over
  // gathered copies of the keys and values when earlier positions are in the arena: there a
  // 1,500-token prompt chunk of the medium demo model spent 1 s per layer in the score matrix,
  // its causal mask and softmax.
  std::vector<cpu_kernels::QueryRun> runs;
  std::vector<at::Tensor> outputs;  // per slice; undefined for those the kernel takes
  offset = 0;
  for (const SequenceSlice& sequence : batch.sequences) {
    if (paged_kernel && sequence.kv_blocks != nullptr) {
      runs.push_back({offset, sequence.length, sequence.kv_blocks, sequence.start_position + 1});
      outputs.emplace_back();
    } else {
      const int64_t context = sequence.start_position + sequence.length;
      // A slice that starts the sequence has all its keys and values at hand: no gathering.
      auto [keys, values] = sequence.start_position > 0
                                ? batch.kv_arena->Gather(layer, *sequence.kv_blocks, context)
                                : std::make_pair(key.narrow(0, offset, sequence.length).transpose(0, 1),
                                                 value.narrow(0, offset, sequence.length).transpose(0, 1));
      outputs.push_back(Attend(sequence, query.narrow(0, offset, sequence.length), keys, values));
    }
    offset += sequence.length;
  }
  if (runs.empty()) return outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0);
  at::Tensor attention = at::empty({tokens, query.size(1) * query.size(2)}, query.options());
  cpu_kernels::AttendRuns(query, kv, runs, attention);
  offset = 0;
  for (size_t s = 0; s < batch.sequences.size(); ++s) {
    if (outputs[s].defined()) attention.narrow(0, offset, batch.sequences[s].length).copy_(outputs[s]);
    offset += batch.sequences[s].length;
  }
  return attention;
}

at::Tensor LlamaModel::Forward(const ForwardBatch& batch) const {
  const int64_t tokens = static_cast<int64_t>(batch.token_ids.size());
  TORCH_CHECK(tokens > 0, "empty batch");
  std::vector<int64_t> positions;
  positions.reserve(tokens);
  for (const SequenceSlice& sequence : batch.sequences) {
    TORCH_CHECK(sequence.length > 0, "empty sequence slice");
    TORCH_CHECK(sequence.kv_blocks != nullptr || sequence.start_position == 0,
                "a slice without KV blocks must start at position 0");
    TORCH_CHECK(sequence.kv_blocks == nullptr || batch.kv_arena != nullptr, "a slice with KV blocks needs an arena");
    TORCH_CHECK(sequence.kv_blocks == nullptr || static_cast<int64_t>(sequence.kv_blocks->size()) *
                                                         batch.kv_arena->block_tokens() >=
                                                     sequence.start_position + sequence.length,
                "the slice's KV blocks hold fewer positions than it reaches");
    for (int64_t i = 0; i < sequence.length; ++i) positions.push_back(sequence.start_position + i);
  }
  TORCH_CHECK(static_cast<int64_t>(positions.size()) == tokens,
              "sequence slice lengths do not add up to the batch's tokens");
  const at::TensorOptions long_options = at::TensorOptions().dtype(at::kLong);
  at::Tensor ids = at::tensor(batch.token_ids, long_options).to(options_.device);
  at::Tensor position_tensor = at::tensor(positions, long_options).to(options_.device);
  auto [cos, sin] = RotaryTables(inverse_frequencies_, position_tensor, options_.dtype);

  const int64_t heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t head_dim = config_.head_dim;
  const double eps = config_.rms_norm_eps;
  const ProjectionDeltaHook* deltas = batch.deltas;

  const int64_t q_width = heads * head_dim;
  const int64_t kv_width = kv_heads * head_dim;
  const int64_t intermediate = config_.intermediate_size;
  at::Tensor hidden = weights_.embed_tokens.GatherRows(ids, options_.dtype);
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const LayerWeights& w = weights_.layers[layer];
    at::Tensor normed = RmsNorm(hidden, w.input_norm, eps);
    // One product for q, k and v; deltas are added in place into their column ranges.
    at::Tensor qkv = LinearGroup(normed, {{&w.q_proj, &w.q_bias}, {&w.k_proj, &w.k_bias},
                                          {&w.v_proj, &w.v_bias}});
    if (deltas != nullptr) {
      // Each view is taken just before its delta goes in: when training, the first in-place
      // addition gives qkv an autograd history that views taken earlier would not carry.
      at::Tensor query_part = qkv.narrow(1, 0, q_width);
      deltas->AddDelta(layer, Projection::kQuery, normed, query_part);
      at::Tensor key_part = qkv.narrow(1, q_width, kv_width);
      deltas->AddDelta(layer, Projection::kKey, normed, key_part);
      at::Tensor value_part = qkv.narrow(1, q_width + kv_width, kv_width);
      deltas->AddDelta(layer, Projection::kValue, normed, value_part);
    }
    at::Tensor value = qkv.narrow(1, q_width + kv_width, kv_width);
    // q and k are adjacent columns: rotate all their heads in one call.
    at::Tensor rotated;
    if (cpu_kernels::Applies({&qkv, &cos, &sin})) {
      cpu_kernels::RotateInPlace(qkv, heads + kv_heads, head_dim, cos, sin);
      rotated = qkv.narrow(1, 0, q_width + kv_width).view({tokens, heads + kv_heads, head_dim});
    } else {
      rotated = ApplyRotary(qkv.narrow(1, 0, q_width + kv_width).view({tokens, heads + kv_heads, head_dim}), cos, sin);
    }
    at::Tensor query = rotated.narrow(1, 0, heads);
    at::Tensor key = rotated.narrow(1, heads, kv_heads);
    value = value.view({tokens, kv_heads, head_dim});

    at::Tensor attention = AttendAll(batch, layer, query, key, value);
    hidden = AddResidual(hidden, Project(layer, Projection::kOutput, attention, w.o_proj, w.o_bias, deltas));

    normed = RmsNorm(hidden, w.post_attention_norm, eps);
    at::Tensor gate_up = LinearGroup(normed, {{&w.gate_proj, &w.gate_bias}, {&w.up_proj, &w.up_bias}});
    if (deltas != nullptr) {  // views taken just before their deltas, as for qkv
      at::Tensor gate_part = gate_up.narrow(1, 0, intermediate);
      deltas->AddDelta(layer, Projection::kGate, normed, gate_part);
      at::Tensor up_part = gate_up.narrow(1, intermediate, intermediate);
      deltas->AddDelta(layer, Projection::kUp, normed, up_part);
    }
    at::Tensor gate = gate_up.narrow(1, 0, intermediate);
    at::Tensor up = gate_up.narrow(1, intermediate, intermediate);
    const at::Tensor activated =
        cpu_kernels::Applies({&gate, &up}) ? cpu_kernels::SiluTimes(gate, up) : at::silu(gate) * up;
    hidden = AddResidual(hidden, Project(layer, Projection::kDown, activated, w.down_proj, w.down_bias, deltas));
  }
  if (!batch.logit_rows.empty()) {
    hidden = hidden.index_select(0, at::tensor(batch.logit_rows, long_options).to(options_.device));
  }
  hidden = RmsNorm(hidden, weights_.final_norm, eps);
  return Linear(hidden, weights_.lm_head, at::Tensor()).to(at::kFloat);
}

absl::StatusOr<at::Tensor> LlamaModel::Run(const ForwardBatch& batch) const {
  at::Tensor logits;
  RETURN_IF_ERROR(common::CatchTorchErrors("forward pass", [&] { logits = Forward(batch); }));
  return logits;
}

absl::StatusOr<at::Device> ParseDevice(const std::string& text) {
  if (text == "cpu") return at::Device(at::kCPU);
  if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--device ", text, ": this build of libtorch has no CUDA support or no GPU is visible"));
    }
    try {
      return at::Device(text);
    } catch (const std::exception&) {
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device \"", text, "\" is not one of cpu, cuda, cuda:N"));
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& text) {
  if (text == "float32" || text == "fp32" || text == "f32") return at::kFloat;
  if (text == "float16" || text == "fp16" || text == "f16" || text == "half") return at::kHalf;
  if (text == "bfloat16" || text == "bf16") return at::kBFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype \"", text, "\" is not one of float32, float16, bfloat16"));
}

}  // namespace deltaserve::model
