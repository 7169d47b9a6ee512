// The forward pass against an independent reference: a naive Llama written here from the
// architecture's definition (per-head loops, KV heads repeated for GQA, RoPE angles computed
// with std::cos/std::sin per element, explicit causal mask), prefilled and decoded one token
// against a KV cache (under inference mode, so through cpu_inference_kernels). Also: KV-cache incremental decode
// against a full recompute, batch composition invariance, and F16/BF16 checkpoints.
#include <cmath>
#include <map>

#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "server/model/llama_model.h"
#include "server/model/rope.h"
#include "tests/support/test_kv.h"
#include "tests/support/test_models.h"

namespace deltaserve::tools {
// Names the parameter in test logs instead of dumping its bytes.
void PrintTo(const DemoModelOptions& options, std::ostream* out) { *out << options.architecture; }
}  // namespace deltaserve::tools

namespace deltaserve::model {
namespace {

using testing::WriteModel;

at::Tensor ReferenceRmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor result = at::empty_like(x);
  for (int64_t row = 0; row < x.size(0); ++row) {
    double sum = 0;
    for (int64_t i = 0; i < x.size(1); ++i) sum += std::pow(x[row][i].item<double>(), 2);
    double scale = 1.0 / std::sqrt(sum / x.size(1) + eps);
    result[row] = x[row] * scale * weight;
  }
  return result;
}

// Rotates pairs (i, i + d/2) of every head by position * inverse_frequency[i].
at::Tensor ReferenceRope(const at::Tensor& x, int64_t heads, int64_t head_dim,
                         const std::vector<double>& inverse) {
  at::Tensor result = x.clone().view({x.size(0), heads, head_dim});
  at::Tensor source = x.view({x.size(0), heads, head_dim});
  auto out = result.accessor<float, 3>();
  auto in = source.accessor<float, 3>();
  const int64_t half = head_dim / 2;
  for (int64_t position = 0; position < x.size(0); ++position) {
    for (int64_t head = 0; head < heads; ++head) {
      for (int64_t i = 0; i < half; ++i) {
        double angle = position * inverse[i];
        double a = in[position][head][i], b = in[position][head][i + half];
        out[position][head][i] = static_cast<float>(a * std::cos(angle) - b * std::sin(angle));
        out[position][head][i + half] = static_cast<float>(b * std::cos(angle) + a * std::sin(angle));
      }
    }
  }
  return result.view({x.size(0), heads * head_dim});
}

// Full-sequence logits of one sequence, computed naively.
at::Tensor ReferenceForward(const LlamaModel& model, const std::vector<int64_t>& ids) {
  const ModelConfig& c = model.config();
  const LlamaWeights& w = model.weights();
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t hd = c.head_dim;
  const int64_t group = c.num_attention_heads / c.num_key_value_heads;
  std::vector<double> inverse = RopeInverseFrequencies(c);
  at::Tensor hidden = at::empty({n, c.hidden_size});
  for (int64_t t = 0; t < n; ++t) hidden[t] = w.embed_tokens.Dense(at::kFloat)[ids[t]];
  auto linear = [](const at::Tensor& x, const WeightMatrix& weight, const at::Tensor& bias) {
    at::Tensor y = at::mm(x, weight.Dense(at::kFloat).t());
    return bias.defined() ? y + bias : y;
  };
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const LayerWeights& lw = w.layers[layer];
    at::Tensor x = ReferenceRmsNorm(hidden, lw.input_norm, c.rms_norm_eps);
    at::Tensor q = ReferenceRope(linear(x, lw.q_proj, lw.q_bias), c.num_attention_heads, hd, inverse);
    at::Tensor k = ReferenceRope(linear(x, lw.k_proj, lw.k_bias), c.num_key_value_heads, hd, inverse);
    at::Tensor v = linear(x, lw.v_proj, lw.v_bias);
    at::Tensor attention = at::zeros({n, c.num_attention_heads * hd});
    for (int64_t head = 0; head < c.num_attention_heads; ++head) {
      const int64_t kv_head = head / group;  // the KV head this query head reads (repeated KV)
      at::Tensor qh = q.narrow(1, head * hd, hd);
      at::Tensor kh = k.narrow(1, kv_head * hd, hd);
      at::Tensor vh = v.narrow(1, kv_head * hd, hd);
      for (int64_t i = 0; i < n; ++i) {
        at::Tensor scores = at::mv(kh.narrow(0, 0, i + 1), qh[i]) / std::sqrt(static_cast<double>(hd));
        at::Tensor weights = at::softmax(scores, 0);
        attention[i].narrow(0, head * hd, hd).copy_(at::mv(vh.narrow(0, 0, i + 1).t(), weights));
      }
    }
    hidden = hidden + linear(attention, lw.o_proj, lw.o_bias);
    x = ReferenceRmsNorm(hidden, lw.post_attention_norm, c.rms_norm_eps);
    at::Tensor gate = linear(x, lw.gate_proj, lw.gate_bias);
    at::Tensor up = linear(x, lw.up_proj, lw.up_bias);
    at::Tensor activated = gate / (1 + at::exp(-gate)) * up;
    hidden = hidden + linear(activated, lw.down_proj, lw.down_bias);
  }
  return at::mm(ReferenceRmsNorm(hidden, w.final_norm, c.rms_norm_eps), w.lm_head.Dense(at::kFloat).t());
}

std::unique_ptr<LlamaModel> LoadModel(const std::string& directory, at::ScalarType dtype = at::kFloat) {
  auto model = LlamaModel::Load(directory, {dtype, at::kCPU, std::nullopt});
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

const std::vector<int64_t> kIds = {1, 17, 250, 33, 4, 400, 99, 12, 7, 300, 45};

class ArchitectureTest : public ::testing::TestWithParam<tools::DemoModelOptions> {};

TEST_P(ArchitectureTest, MatchesReferenceImplementation) {
  c10::InferenceMode guard;
  std::string directory = WriteModel(GetParam(), "reference");
  auto model = LoadModel(directory);
  ForwardBatch batch;
  batch.token_ids = kIds;
  batch.sequences.push_back({0, static_cast<int64_t>(kIds.size()), nullptr});
  at::Tensor logits = model->Forward(batch);
  at::Tensor expected = ReferenceForward(*model, kIds);
  ASSERT_EQ(logits.sizes(), expected.sizes());
  EXPECT_TRUE(at::allclose(logits, expected, 1e-4, 1e-4))
      << "max difference " << (logits - expected).abs().max().item<float>();

  // The last token decoded alone against a KV cache of the others (the one-token attention path).
  const int64_t n = static_cast<int64_t>(kIds.size());
  testing::TestKv kv = testing::MakeTestKv(*model, 1, n);
  ForwardBatch prefill;
  prefill.kv_arena = &kv.arena;
  prefill.token_ids.assign(kIds.begin(), kIds.end() - 1);
  prefill.sequences.push_back({0, n - 1, &kv.tables[0]});
  (void)model->Forward(prefill);
  ForwardBatch decode;
  decode.kv_arena = &kv.arena;
  decode.token_ids = {kIds.back()};
  decode.sequences.push_back({n - 1, 1, &kv.tables[0]});
  at::Tensor last = model->Forward(decode);
  EXPECT_TRUE(at::allclose(last, expected.narrow(0, n - 1, 1), 1e-4, 1e-4))
      << "max difference " << (last - expected.narrow(0, n - 1, 1)).abs().max().item<float>();

  // A 90-token prompt into the KV arena in two chunks of 57 and 33 rows: the packed GEMM (from 48
  // rows) and the register tiles, the tiled prompt attention from position 0 and from the middle
  // of the sequence, and the SiLU and residual kernels, against the reference.
  std::vector<int64_t> long_ids;
  for (int64_t i = 0; i < 90; ++i) long_ids.push_back(1 + (i * 37) % 400);
  const at::Tensor long_expected = ReferenceForward(*model, long_ids);
  testing::TestKv long_kv = testing::MakeTestKv(*model, 1, 90);
  at::Tensor chunks[2];
  for (int chunk = 0; chunk < 2; ++chunk) {
    const int64_t start = chunk == 0 ? 0 : 57, length = chunk == 0 ? 57 : 33;
    ForwardBatch part;
    part.kv_arena = &long_kv.arena;
    part.token_ids.assign(long_ids.begin() + start, long_ids.begin() + start + length);
    part.sequences.push_back({start, length, &long_kv.tables[0]});
    chunks[chunk] = model->Forward(part);
  }
  const at::Tensor long_logits = at::cat({chunks[0], chunks[1]}, 0);
  EXPECT_TRUE(at::allclose(long_logits, long_expected, 1e-4, 1e-4))
      << "max difference " << (long_logits - long_expected).abs().max().item<float>();
}

tools::DemoModelOptions Options(const std::string& architecture, bool tied,
                                RopeScalingType scaling) {
  tools::DemoModelOptions options;
  options.architecture = architecture;
  options.tie_word_embeddings = tied;
  options.rope_scaling.type = scaling;
  if (scaling == RopeScalingType::kLinear) options.rope_scaling.factor = 2.0;
  if (scaling == RopeScalingType::kLlama3) {
    options.rope_scaling.factor = 8.0;
    options.rope_scaling.original_max_position_embeddings = 64;
  }
  return options;
}

std::string ArchitectureName(const ::testing::TestParamInfo<tools::DemoModelOptions>& info) {
  static const char* const kScaling[] = {"NoScaling", "LinearRope", "Llama3Rope"};
  return info.param.architecture.substr(0, info.param.architecture.find("For")) +
         (info.param.tie_word_embeddings ? "Tied" : "") +
         kScaling[static_cast<int>(info.param.rope_scaling.type)];
}

INSTANTIATE_TEST_SUITE_P(
    Architectures, ArchitectureTest,
    ::testing::Values(Options("LlamaForCausalLM", false, RopeScalingType::kNone),
                      Options("LlamaForCausalLM", true, RopeScalingType::kLinear),
                      Options("MistralForCausalLM", false, RopeScalingType::kLlama3),
                      Options("Qwen2ForCausalLM", true, RopeScalingType::kNone)),
    ArchitectureName);

// Adds scale * (x A^T) B^T to chosen projections, as a LoRA variant will.
class LowRankHook : public ProjectionDeltaHook {
 public:
  struct Factors {
    at::Tensor a, b;  // [rank, in], [out, rank]
  };
  void AddDelta(int64_t layer, Projection projection, const at::Tensor& input,
                at::Tensor& output) const override {
    auto it = factors.find({layer, static_cast<int>(projection)});
    if (it == factors.end()) return;
    output.add_(at::matmul(at::matmul(input, it->second.a.t()), it->second.b.t()), scale);
  }
  std::map<std::pair<int64_t, int>, Factors> factors;
  double scale = 0.5;
};

TEST(ForwardTest, DeltaHookMatchesMergedWeights) {
  c10::InferenceMode guard;
  auto model = LoadModel(WriteModel(Options("Qwen2ForCausalLM", false, RopeScalingType::kNone), "hook"));
  LowRankHook hook;
  LlamaWeights merged = model->weights();
  at::manual_seed(3);
  const int64_t rank = 4;
  auto add = [&](int64_t layer, Projection projection, WeightMatrix& weight) {
    LowRankHook::Factors f{at::randn({rank, weight.columns()}) * 0.2, at::randn({weight.rows(), rank}) * 0.2};
    hook.factors[{layer, static_cast<int>(projection)}] = f;
    weight.values = weight.Dense(at::kFloat) + hook.scale * at::matmul(f.b, f.a);  // the base is untouched
  };
  add(0, Projection::kQuery, merged.layers[0].q_proj);
  add(0, Projection::kValue, merged.layers[0].v_proj);
  add(1, Projection::kKey, merged.layers[1].k_proj);
  add(1, Projection::kOutput, merged.layers[1].o_proj);
  add(0, Projection::kUp, merged.layers[0].up_proj);
  add(1, Projection::kGate, merged.layers[1].gate_proj);
  add(1, Projection::kDown, merged.layers[1].down_proj);
  // The reference reads the per-projection tensors, so it sees the merged weights.
  LlamaModel merged_model(model->config(), merged, {});
  ForwardBatch batch;
  batch.token_ids = kIds;
  batch.sequences.push_back({0, static_cast<int64_t>(kIds.size()), nullptr});
  batch.deltas = &hook;
  at::Tensor hooked = model->Forward(batch);
  at::Tensor expected = ReferenceForward(merged_model, kIds);
  EXPECT_TRUE(at::allclose(hooked, expected, 1e-4, 1e-4))
      << "max difference " << (hooked - expected).abs().max().item<float>();
  batch.deltas = nullptr;
  EXPECT_FALSE(at::allclose(model->Forward(batch), expected, 1e-3, 1e-3));  // the deltas matter
}

TEST(ForwardTest, IncrementalDecodingMatchesFullRecompute) {
  c10::InferenceMode guard;
  auto model = LoadModel(testing::TinyModelDir());
  const int64_t n = static_cast<int64_t>(kIds.size());
  ForwardBatch full;
  full.token_ids = kIds;
  full.sequences.push_back({0, n, nullptr});
  at::Tensor expected = model->Forward(full);

  // Prefill 4 tokens, then a chunk of 3, then one token at a time, through one KV cache.
  testing::TestKv kv = testing::MakeTestKv(*model, 1, n);
  std::vector<at::Tensor> pieces;
  int64_t position = 0;
  for (int64_t chunk : {4, 3, 1, 1, 1, 1}) {
    ForwardBatch step;
    step.kv_arena = &kv.arena;
    step.token_ids.assign(kIds.begin() + position, kIds.begin() + position + chunk);
    step.sequences.push_back({position, chunk, &kv.tables[0]});
    pieces.push_back(model->Forward(step));
    position += chunk;
  }
  ASSERT_EQ(position, n);
  at::Tensor incremental = at::cat(pieces, 0);
  EXPECT_TRUE(at::allclose(incremental, expected, 1e-5, 1e-4))
      << "max difference " << (incremental - expected).abs().max().item<float>();
}

TEST(ForwardTest, BatchOfDifferentLengthsMatchesEachAlone) {
  c10::InferenceMode guard;
  auto model = LoadModel(testing::TinyModelDir());
  std::vector<std::vector<int64_t>> sequences = {{1, 5, 9}, {1, 300, 200, 100, 50, 25, 12}, {1, 77}};
  ForwardBatch batch;
  testing::TestKv kv = testing::MakeTestKv(*model, static_cast<int64_t>(sequences.size()), 16);
  batch.kv_arena = &kv.arena;
  for (const auto& sequence : sequences) {
    batch.token_ids.insert(batch.token_ids.end(), sequence.begin(), sequence.end());
  }
  for (size_t i = 0; i < sequences.size(); ++i) {
    batch.sequences.push_back({0, static_cast<int64_t>(sequences[i].size()), &kv.tables[i]});
  }
  at::Tensor together = model->Forward(batch);
  int64_t row = 0;
  for (const auto& sequence : sequences) {
    ForwardBatch alone;
    alone.token_ids = sequence;
    alone.sequences.push_back({0, static_cast<int64_t>(sequence.size()), nullptr});
    at::Tensor expected = model->Forward(alone);
    at::Tensor actual = together.narrow(0, row, static_cast<int64_t>(sequence.size()));
    EXPECT_TRUE(at::allclose(actual, expected, 1e-5, 1e-4));
    row += static_cast<int64_t>(sequence.size());
  }
}

// A step where every sequence decodes one token attends in one kernel call over all of them
// (cpu_kernels::AttendRuns, reading each through its block table); its logits equal each sequence recomputed in full through
// the prefill path (libtorch's batched matrix products).
TEST(ForwardTest, DecodeStepOfSeveralSequencesMatchesFullRecompute) {
  c10::InferenceMode guard;
  auto model = LoadModel(testing::TinyModelDir());
  const std::vector<std::vector<int64_t>> prefixes = {{1, 5, 9}, {1, 300, 200, 100, 50, 25, 12}, {1, 77}};
  const std::vector<int64_t> next = {42, 7, 401};
  testing::TestKv kv = testing::MakeTestKv(*model, static_cast<int64_t>(prefixes.size()), 16);
  ForwardBatch prefill, decode;
  prefill.kv_arena = decode.kv_arena = &kv.arena;
  for (size_t i = 0; i < prefixes.size(); ++i) {
    prefill.token_ids.insert(prefill.token_ids.end(), prefixes[i].begin(), prefixes[i].end());
  }
  for (size_t i = 0; i < prefixes.size(); ++i) {
    const int64_t length = static_cast<int64_t>(prefixes[i].size());
    prefill.sequences.push_back({0, length, &kv.tables[i]});
    decode.token_ids.push_back(next[i]);
    decode.sequences.push_back({length, 1, &kv.tables[i]});
  }
  (void)model->Forward(prefill);
  at::Tensor decoded = model->Forward(decode);
  ASSERT_EQ(decoded.size(0), 3);
  for (size_t i = 0; i < prefixes.size(); ++i) {
    ForwardBatch full;
    full.token_ids = prefixes[i];
    full.token_ids.push_back(next[i]);
    full.sequences.push_back({0, static_cast<int64_t>(full.token_ids.size()), nullptr});
    full.logit_rows = {static_cast<int64_t>(prefixes[i].size())};
    at::Tensor expected = model->Forward(full);
    at::Tensor actual = decoded.narrow(0, static_cast<int64_t>(i), 1);
    EXPECT_TRUE(at::allclose(actual, expected, 1e-5, 1e-4))
        << "sequence " << i << ": max difference " << (actual - expected).abs().max().item<float>();
  }
}

// A step that mixes decoding sequences (read straight from their blocks by the decode kernel)
// with a prompt chunk of another (read from a gathered copy), blocks 5 positions long so that
// chunks and contexts cross block boundaries: every row equals its sequence recomputed in full.
TEST(ForwardTest, StepMixingDecodesAndAPromptChunkMatchesFullRecompute) {
  c10::InferenceMode guard;
  auto model = LoadModel(testing::TinyModelDir());
  const std::vector<std::vector<int64_t>> tokens = {
      {1, 5, 9, 33, 2, 8}, {1, 300, 200, 100, 50, 25, 12, 64, 3, 17, 18, 19}, {1, 77, 78, 79, 80, 81, 82, 83, 84}};
  testing::TestKv kv = testing::MakeTestKv(*model, 3, 16, /*block_tokens=*/5);
  // First: sequence 0 and 1 prefill all but their last token, sequence 2 its first 4 tokens.
  const std::vector<int64_t> before = {5, 11, 4};
  ForwardBatch first;
  first.kv_arena = &kv.arena;
  for (size_t i = 0; i < tokens.size(); ++i) {
    first.token_ids.insert(first.token_ids.end(), tokens[i].begin(), tokens[i].begin() + before[i]);
    first.sequences.push_back({0, before[i], &kv.tables[i]});
  }
  (void)model->Forward(first);
  // Then one step: sequences 0 and 1 decode their last token, sequence 2 runs the rest (5 tokens).
  ForwardBatch step;
  step.kv_arena = &kv.arena;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t length = static_cast<int64_t>(tokens[i].size()) - before[i];
    step.token_ids.insert(step.token_ids.end(), tokens[i].begin() + before[i], tokens[i].end());
    step.sequences.push_back({before[i], length, &kv.tables[i]});
  }
  const at::Tensor logits = model->Forward(step);
  int64_t row = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t length = static_cast<int64_t>(tokens[i].size()) - before[i];
    ForwardBatch full;
    full.token_ids = tokens[i];
    full.sequences.push_back({0, static_cast<int64_t>(tokens[i].size()), nullptr});
    const at::Tensor expected = model->Forward(full).narrow(0, before[i], length);
    const at::Tensor actual = logits.narrow(0, row, length);
    EXPECT_TRUE(at::allclose(actual, expected, 1e-5, 1e-4))
        << "sequence " << i << ": max difference " << (actual - expected).abs().max().item<float>();
    row += length;
  }
}

TEST(ForwardTest, LogitRowsSelectsRows) {
  c10::InferenceMode guard;
  auto model = LoadModel(testing::TinyModelDir());
  ForwardBatch batch;
  batch.token_ids = kIds;
  batch.sequences.push_back({0, static_cast<int64_t>(kIds.size()), nullptr});
  at::Tensor all = model->Forward(batch);
  batch.logit_rows = {10, 2};
  at::Tensor some = model->Forward(batch);
  // Two rows take the matrix-vector path, eleven the matrix-matrix one: equal up to rounding.
  EXPECT_TRUE(at::allclose(some[0], all[10], 1e-5, 1e-4));
  EXPECT_TRUE(at::allclose(some[1], all[2], 1e-5, 1e-4));
  EXPECT_FALSE(at::allclose(some[1], all[3], 1e-5, 1e-4));
}

TEST(ForwardTest, HalfPrecisionCheckpointsLoadToTheSameValues) {
  for (at::ScalarType stored : {at::kHalf, at::kBFloat16}) {
    tools::DemoModelOptions options;
    std::string f32 = WriteModel(options, "f32");
    options.dtype = stored;
    std::string half = WriteModel(options, "half");
    auto reference = LoadModel(f32);
    auto loaded = LoadModel(half);  // computed in float32
    at::Tensor expected = reference->weights().layers[1].down_proj.values.to(stored);
    // Kept at the checkpoint's width (the default), holding the same values.
    EXPECT_EQ(loaded->weights().layers[1].down_proj.width(), stored);
    EXPECT_TRUE(at::equal(loaded->weights().layers[1].down_proj.values, expected)) << c10::toString(stored);
    EXPECT_TRUE(at::equal(loaded->weights().embed_tokens.values,
                          reference->weights().embed_tokens.values.to(stored)));
  }
}

TEST(ForwardTest, BFloat16ComputeIsCloseToFloat32) {
  c10::InferenceMode guard;
  auto f32 = LoadModel(testing::TinyModelDir());
  auto bf16 = LoadModel(testing::TinyModelDir(), at::kBFloat16);
  ForwardBatch batch;
  batch.token_ids = kIds;
  batch.sequences.push_back({0, static_cast<int64_t>(kIds.size()), nullptr});
  at::Tensor a = f32->Forward(batch);
  at::Tensor b = bf16->Forward(batch);
  EXPECT_EQ(b.scalar_type(), at::kFloat);
  // bf16 keeps ~3 significant digits; the logits agree loosely and the argmax mostly.
  EXPECT_LT((a - b).abs().max().item<float>(), 0.25f * a.abs().max().item<float>());
}

}  // namespace
}  // namespace deltaserve::model
