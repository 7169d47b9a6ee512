// PEFT adapters and the mixed-variant data path. Adapters here are written by hand (tensors +
// adapter_config.json) so the reader is checked against scales computed in the test; the
// mixed batch is checked against models whose weights were merged as W + scale * B A.
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>

#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "server/common/file_util.h"
#include "server/deltas/cpu_low_rank.h"
#include "server/deltas/peft_adapter.h"
#include "server/deltas/delta_backend.h"
#include "server/model/llama_model.h"
#include "server/model/safetensors_tensor.h"
#include "tests/support/test_models.h"

namespace deltaserve::deltas {
namespace {

using model::Projection;

// One module's raw factors as written to disk, with the scale the test expects.
struct RawModule {
  int64_t layer;
  Projection projection;
  at::Tensor a, b;
  double expected_scale;
};

std::string WriteAdapter(const std::string& config_json, const std::vector<RawModule>& modules) {
  std::string directory = testing::MakeTempDir("adapter");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const RawModule& module : modules) {
    tensors.push_back({"base_model.model." + ModuleName(module.layer, module.projection) + ".lora_A.weight", module.a});
    tensors.push_back({"base_model.model." + ModuleName(module.layer, module.projection) + ".lora_B.weight", module.b});
  }
  EXPECT_TRUE(model::WriteSafetensors(common::JoinPath(directory, "adapter_model.safetensors"), tensors).ok());
  EXPECT_TRUE(common::WriteFileAtomically(common::JoinPath(directory, "adapter_config.json"), config_json).ok());
  return directory;
}

RawModule Random(const model::ModelConfig& config, int64_t layer, Projection projection, int64_t rank,
                 double expected_scale) {
  auto [out, in] = ProjectionShape(config, projection);
  return {layer, projection, at::randn({rank, in}) * 0.3, at::randn({out, rank}) * 0.3, expected_scale};
}

class DeltasTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto loaded = model::LlamaModel::Load(testing::TinyModelDir(), {});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    base_ = loaded->release();
  }
  static void TearDownTestSuite() { delete base_; }
  void ExpectMixedBatchMatchesMergedWeights(const std::vector<std::vector<int64_t>>& sequences,
                                            const std::vector<int>& variants, bool serving_layout);
  const model::ModelConfig& config() const { return base_->config(); }

  // A model whose weights are the base's plus scale * B A of every module, computed here.
  std::unique_ptr<model::LlamaModel> Merged(const std::vector<RawModule>& modules) const {
    model::LlamaWeights weights = base_->weights();
    for (const RawModule& module : modules) {
      model::WeightMatrix& weight = model::ProjectionWeight(weights.layers[module.layer], module.projection);
      weight.values = weight.Dense(at::kFloat) + module.expected_scale * at::matmul(module.b, module.a);
    }
    return std::make_unique<model::LlamaModel>(config(), weights, model::ModelOptions{});
  }

  static model::LlamaModel* base_;
};

model::LlamaModel* DeltasTest::base_ = nullptr;

// Three adapters of different kinds: plain LoRA, rsLoRA with a regex target, and ranks and
// alphas by pattern; with the raw factors they were written from (for the merged reference).
struct ThreeAdapters {
  std::vector<std::vector<RawModule>> raw;
  std::vector<DeltaSet> deltas;
};

ThreeAdapters WriteThreeAdapters(const model::ModelConfig& config) {
  ThreeAdapters adapters;
  // Plain LoRA on q and v: scale 16 / 8.
  adapters.raw.push_back({Random(config, 0, Projection::kQuery, 8, 2.0), Random(config, 1, Projection::kValue, 8, 2.0)});
  std::vector<std::string> directories;
  directories.push_back(WriteAdapter(
      R"({"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj","v_proj"],"bias":"none"})",
      adapters.raw.back()));
  // rsLoRA with a regex target: scale 8 / sqrt(4).
  adapters.raw.push_back({Random(config, 0, Projection::kOutput, 4, 4.0), Random(config, 1, Projection::kGate, 4, 4.0),
                          Random(config, 1, Projection::kDown, 4, 4.0)});
  directories.push_back(WriteAdapter(
      R"json({"r":4,"lora_alpha":8,"use_rslora":true,"target_modules":"model\\.layers\\.\\d+\\.(self_attn\\.o_proj|mlp\\.(gate|down)_proj)"})json",
      adapters.raw.back()));
  // rank_pattern / alpha_pattern: r 6 (alpha 3) except down_proj rank 2 and layer 1's k_proj alpha 12.
  adapters.raw.push_back({Random(config, 0, Projection::kKey, 6, 3.0 / 6), Random(config, 1, Projection::kKey, 6, 12.0 / 6),
                          Random(config, 0, Projection::kDown, 2, 3.0 / 2), Random(config, 1, Projection::kUp, 6, 3.0 / 6)});
  directories.push_back(WriteAdapter(
      R"({"r":6,"lora_alpha":3,"target_modules":["k_proj","down_proj","up_proj"],
          "rank_pattern":{"down_proj":2},"alpha_pattern":{"layers.1.self_attn.k_proj":12}})",
      adapters.raw.back()));
  for (const std::string& directory : directories) {
    auto adapter = ReadPeftAdapter(directory, config, at::kFloat, at::kCPU);
    EXPECT_TRUE(adapter.ok()) << adapter.status();
    if (adapter.ok()) adapters.deltas.push_back(std::move(adapter->deltas));
  }
  return adapters;
}

// Runs `sequences` as one batch, sequence i served by adapter variants[i] (-1: the base), and
// checks each sequence's logits against the same sequence run alone through a model whose
// weights have its adapter merged in.
void DeltasTest::ExpectMixedBatchMatchesMergedWeights(const std::vector<std::vector<int64_t>>& sequences,
                                                      const std::vector<int>& variants, bool serving_layout) {
  at::manual_seed(5);
  ThreeAdapters adapters = WriteThreeAdapters(config());
  ASSERT_EQ(adapters.deltas.size(), 3u);
  if (serving_layout) {
    for (DeltaSet& deltas : adapters.deltas) deltas = ServingLayout(deltas);
    const at::Tensor& b = adapters.deltas[0].Factors(0, Projection::kQuery)[0].b;
    EXPECT_EQ(b.stride(0), 1);  // B column-major: the layout the CPU expansion streams
  }
  EXPECT_EQ(adapters.deltas[2].RankSummary(), "k_proj:6 up_proj:6 down_proj:2");
  model::ForwardBatch batch;
  std::vector<DeltaSegment> segments;
  for (size_t i = 0; i < sequences.size(); ++i) {
    segments.push_back({static_cast<int64_t>(batch.token_ids.size()), static_cast<int64_t>(sequences[i].size()),
                        variants[i] < 0 ? nullptr : &adapters.deltas[variants[i]]});
    batch.token_ids.insert(batch.token_ids.end(), sequences[i].begin(), sequences[i].end());
    batch.sequences.push_back({0, static_cast<int64_t>(sequences[i].size()), nullptr});
  }
  std::vector<std::unique_ptr<DeltaBackend>> backends;
  backends.push_back(MakeCpuDeltaBackend());
  backends.push_back(MakeLibtorchDeltaBackend());
  for (const std::unique_ptr<DeltaBackend>& backend : backends) {
    SCOPED_TRACE(backend->name());
    const std::unique_ptr<model::ProjectionDeltaHook> hook = backend->ForStep(segments);
    ASSERT_NE(hook, nullptr);
    batch.deltas = hook.get();
    at::Tensor logits = base_->Forward(batch);
    for (size_t i = 0; i < sequences.size(); ++i) {
      std::unique_ptr<model::LlamaModel> merged = Merged(variants[i] < 0 ? std::vector<RawModule>{} : adapters.raw[variants[i]]);
      model::ForwardBatch alone;
      alone.token_ids = sequences[i];
      alone.sequences.push_back({0, static_cast<int64_t>(sequences[i].size()), nullptr});
      at::Tensor expected = merged->Forward(alone);
      at::Tensor actual = logits.narrow(0, segments[i].start, segments[i].length);
      EXPECT_TRUE(at::allclose(actual, expected, 1e-4, 1e-4))
          << "sequence " << i << " max difference " << (actual - expected).abs().max().item<float>();
      if (variants[i] >= 0) {
        model::ForwardBatch plain_base = alone;
        EXPECT_FALSE(at::allclose(base_->Forward(plain_base), expected, 1e-3, 1e-3)) << "adapter " << i << " has no effect";
      }
    }
  }
}

// One batch: base, plain, rsLoRA, patterned, plain again; different lengths (the longest cut
// into several pieces by the CPU backend); B as read and in the serving layout; both backends.
TEST_F(DeltasTest, MixedBatchMatchesMergedWeights) {
  c10::InferenceMode guard;
  for (bool serving_layout : {false, true}) {
    SCOPED_TRACE(serving_layout ? "serving layout" : "as read");
    ExpectMixedBatchMatchesMergedWeights({{1, 5, 9, 200}, {1, 300, 20, 11, 7, 3}, {1, 42},
                                          {1, 8, 16, 32, 64, 128, 256, 3, 9, 27, 81, 243}, {1, 400, 401}},
                                         {-1, 0, 1, 2, 0}, serving_layout);
  }
}

// A decode-shaped batch: one row per sequence, more segments than one thread takes (the
// matrix-vector path, segments spread over the intra-op threads).
TEST_F(DeltasTest, SingleRowSegmentsMatchMergedWeights) {
  c10::InferenceMode guard;
  ExpectMixedBatchMatchesMergedWeights({{7}, {300}, {42}, {9}, {256}, {12}, {401}, {5}, {77}, {1}, {64}},
                                       {0, 1, 2, -1, 0, 2, 1, 0, 1, 2, 0}, /*serving_layout=*/true);
}

// A step's layout lists, per module, the segments whose variant has factors there, in row
// order; the base's segments and modules a variant leaves alone get nothing; a step of base rows
// only has no hook at all.
TEST_F(DeltasTest, StepLayoutListsEachModulesSegmentsOnce) {
  ThreeAdapters adapters = WriteThreeAdapters(config());
  ASSERT_EQ(adapters.deltas.size(), 3u);
  const DeltaSet& plain = adapters.deltas[0];      // layer 0 q_proj, layer 1 v_proj
  const DeltaSet& patterned = adapters.deltas[2];  // k_proj in both layers, layer 0 down_proj, layer 1 up_proj
  const std::vector<DeltaSegment> segments = {{0, 3, &plain}, {3, 2, nullptr}, {5, 4, &patterned}, {9, 1, &plain}};
  const StepLayout layout(segments);
  ASSERT_FALSE(layout.empty());
  const std::vector<SegmentFactors>& queries = layout.Module(0, Projection::kQuery);
  ASSERT_EQ(queries.size(), 2u);
  EXPECT_EQ(queries[0].start, 0);
  EXPECT_EQ(queries[0].length, 3);
  EXPECT_EQ(queries[1].start, 9);
  EXPECT_EQ(queries[1].factors, &plain.Factors(0, Projection::kQuery));
  const std::vector<SegmentFactors>& keys = layout.Module(1, Projection::kKey);
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0].start, 5);
  EXPECT_EQ(keys[0].length, 4);
  EXPECT_EQ(keys[0].factors, &patterned.Factors(1, Projection::kKey));
  EXPECT_EQ(layout.Module(1, Projection::kValue).size(), 2u);
  EXPECT_EQ(layout.Module(0, Projection::kValue).size(), 0u);
  EXPECT_EQ(layout.Module(0, Projection::kDown).size(), 1u);
  EXPECT_EQ(layout.Module(1, Projection::kDown).size(), 0u);
  EXPECT_EQ(layout.Module(0, Projection::kGate).size(), 0u);
  for (const auto& backend : {MakeCpuDeltaBackend(), MakeLibtorchDeltaBackend()}) {
    EXPECT_EQ(backend->ForStep({{0, 4, nullptr}, {4, 2, nullptr}}), nullptr) << backend->name();
    EXPECT_NE(backend->ForStep(segments), nullptr) << backend->name();
  }
}

// AddLowRankRows on inputs and outputs off the 16-lane vectors (in 45, out 37), ranks off and on
// the 4-row blocks (5, 16), both layouts of B, against a double-precision computation written here.
TEST(CpuLowRankTest, OddShapesMatchADoublePrecisionProduct) {
  at::manual_seed(3);
  const int64_t rows = 3, in = 45, out = 37;
  const std::pair<int64_t, bool> cases[] = {{5, false}, {5, true}, {16, false}, {16, true}};
  for (const auto& [rank, column_major] : cases) {
    SCOPED_TRACE(::testing::Message() << "rank " << rank << (column_major ? ", B column-major" : ", B row-major"));
    const at::Tensor x = at::randn({rows, in});
    const at::Tensor y0 = at::randn({rows, out});
    LowRankFactor factor{at::randn({rank, in}), at::randn({out, rank}), 0.7};
    LowRankFactor used = factor;
    if (column_major) used.b = factor.b.t().contiguous().t();
    ASSERT_TRUE(CpuLowRankApplies(used));
    at::Tensor y = y0.clone();
    AddLowRankRows(x.data_ptr<float>(), in, y.data_ptr<float>(), out, rows, used);
    auto xa = x.accessor<float, 2>();
    auto aa = factor.a.accessor<float, 2>();
    auto ba = factor.b.accessor<float, 2>();
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t o = 0; o < out; ++o) {
        double expected = y0[r][o].item<double>();
        for (int64_t k = 0; k < rank; ++k) {
          double shrunk = 0;
          for (int64_t i = 0; i < in; ++i) shrunk += static_cast<double>(xa[r][i]) * aa[k][i];
          expected += factor.scale * shrunk * ba[o][k];
        }
        EXPECT_NEAR(y[r][o].item<double>(), expected, 1e-4) << "row " << r << " output " << o;
      }
    }
  }
}

TEST_F(DeltasTest, WriteReadRoundTripIsBitIdentical) {
  at::manual_seed(9);
  DeltaSet deltas(config().num_hidden_layers);
  std::vector<RawModule> modules = {Random(config(), 0, Projection::kQuery, 8, 0.75),
                                    Random(config(), 1, Projection::kDown, 3, 2.5),
                                    Random(config(), 1, Projection::kValue, 8, 2.0)};
  for (const RawModule& module : modules) deltas.Add(module.layer, module.projection, {module.a, module.b, module.expected_scale});
  PeftAdapterConfig config_in;
  config_in.r = 8;
  config_in.lora_alpha = 16;
  config_in.base_model_name_or_path = "demo";
  std::string first = testing::MakeTempDir("written");
  ASSERT_TRUE(WritePeftAdapter(first, config_in, deltas).ok());
  auto read = ReadPeftAdapter(first, config(), at::kFloat, at::kCPU);
  ASSERT_TRUE(read.ok()) << read.status();
  for (const RawModule& module : modules) {
    const auto& factors = read->deltas.Factors(module.layer, module.projection);
    ASSERT_EQ(factors.size(), 1u);
    EXPECT_TRUE(at::equal(factors[0].a, module.a));
    EXPECT_TRUE(at::equal(factors[0].b, module.b));
    EXPECT_DOUBLE_EQ(factors[0].scale, module.expected_scale);
  }
  std::string second = testing::MakeTempDir("rewritten");
  ASSERT_TRUE(WritePeftAdapter(second, read->config, read->deltas).ok());
  for (const char* file : {"adapter_model.safetensors", "adapter_config.json"}) {
    EXPECT_EQ(*common::ReadFileToString(common::JoinPath(first, file)),
              *common::ReadFileToString(common::JoinPath(second, file)))
        << file;
  }
}

// Adapters that would serve NaN are refused at read, naming the tensor or module; the same
// check (CheckFactors) guards what jobs publish.
TEST_F(DeltasTest, NonFiniteFactorsAndAbsurdScalesAreRefused) {
  at::manual_seed(5);
  const std::string config_json = R"({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})";
  RawModule query = Random(config(), 0, Projection::kQuery, 4, 2.0);
  RawModule value = Random(config(), 1, Projection::kValue, 4, 2.0);
  ASSERT_TRUE(ReadPeftAdapter(WriteAdapter(config_json, {query, value}), config(), at::kFloat, at::kCPU).ok());
  struct Case {
    std::string config_json;
    std::function<void(RawModule&)> spoil;
    std::string words;
  };
  const std::vector<Case> cases = {
      {config_json, [](RawModule& m) { m.b.fill_(NAN); },
       "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight has non-finite values"},
      {config_json, [](RawModule& m) { m.a[0][0] = INFINITY; },
       "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight has non-finite values"},
      {R"({"r": 4, "lora_alpha": 1e308, "target_modules": ["q_proj", "v_proj"]})", [](RawModule&) {},
       "model.layers.0.self_attn.q_proj has scale 2.5e+307"},
      {R"({"r": 4, "lora_alpha": 8, "alpha_pattern": {"v_proj": -40000}, "target_modules": ["q_proj", "v_proj"]})",
       [](RawModule&) {}, "model.layers.1.self_attn.v_proj has scale -10000"},
      {config_json, [](RawModule& m) { m.b *= 1e6; }, "model.layers.1.self_attn.v_proj's delta may reach"},
  };
  for (const Case& test : cases) {
    RawModule spoiled = value;
    spoiled.a = value.a.clone();
    spoiled.b = value.b.clone();
    test.spoil(spoiled);
    auto read = ReadPeftAdapter(WriteAdapter(test.config_json, {query, spoiled}), config(), at::kFloat, at::kCPU);
    ASSERT_FALSE(read.ok()) << test.words;
    EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(read.status().message().find(test.words), std::string::npos) << read.status();
  }
  DeltaSet stacked(config().num_hidden_layers);
  stacked.Add(0, Projection::kUp, {query.a, query.b, 1.0});
  stacked.Add(0, Projection::kUp, {query.a, query.b * NAN, 1.0});
  const absl::Status status = CheckFactors(stacked);
  EXPECT_NE(status.message().find("up_proj.lora_B.weight (factor 2 of 2) has non-finite values"), std::string::npos)
      << status;
}

TEST_F(DeltasTest, StackedFactorsAreWrittenAsOneEquivalentFactor) {
  at::manual_seed(11);
  DeltaSet deltas(config().num_hidden_layers);
  RawModule first = Random(config(), 0, Projection::kUp, 4, 0.5);
  RawModule second = Random(config(), 0, Projection::kUp, 2, 3.0);
  deltas.Add(0, Projection::kUp, {first.a, first.b, first.expected_scale});
  deltas.Add(0, Projection::kUp, {second.a, second.b, second.expected_scale});
  std::string directory = testing::MakeTempDir("stacked");
  ASSERT_TRUE(WritePeftAdapter(directory, PeftAdapterConfig{}, deltas).ok());
  auto read = ReadPeftAdapter(directory, config(), at::kFloat, at::kCPU);
  ASSERT_TRUE(read.ok()) << read.status();
  at::Tensor expected = first.expected_scale * at::matmul(first.b, first.a) +
                        second.expected_scale * at::matmul(second.b, second.a);
  EXPECT_EQ(read->deltas.Factors(0, Projection::kUp)[0].rank(), 6);
  EXPECT_TRUE(at::allclose(read->deltas.Merged(0, Projection::kUp), expected, 1e-5, 1e-5));
}

TEST_F(DeltasTest, MalformedAdaptersAreRejectedWithTheReason) {
  auto expect_error = [&](const std::string& directory, const std::string& fragment) {
    auto adapter = ReadPeftAdapter(directory, config(), at::kFloat, at::kCPU);
    ASSERT_FALSE(adapter.ok()) << fragment;
    EXPECT_NE(adapter.status().message().find(fragment), std::string::npos) << adapter.status();
  };
  const std::string good_config = R"({"r":4,"lora_alpha":8,"target_modules":["q_proj"]})";
  RawModule q = Random(config(), 0, Projection::kQuery, 4, 2);

  RawModule wrong_rank = Random(config(), 0, Projection::kQuery, 5, 2);
  expect_error(WriteAdapter(good_config, {wrong_rank}),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape [5, 64], expected [4, 64]");
  expect_error(WriteAdapter(good_config, {Random(config(), 0, Projection::kValue, 4, 2)}),
               "which adapter_config.json's target_modules does not include");
  expect_error(WriteAdapter(good_config, {Random(config(), 7, Projection::kQuery, 4, 2)}),
               "is for layer 7 but the base model has 2 layers");
  expect_error(WriteAdapter("{not json", {q}), "adapter_config.json: not a JSON object");
  expect_error(WriteAdapter(R"({"r":4,"target_modules":["q_proj"],"bias":"all"})", {q}), "bias \"all\"");
  expect_error(WriteAdapter(R"({"r":4,"target_modules":["q_proj"],"use_dora":true})", {q}), "DoRA");
  expect_error(WriteAdapter(R"({"r":0,"target_modules":["q_proj"]})", {q}), "\"r\" must be a positive integer");

  // Only lora_A of a module.
  std::string half = testing::MakeTempDir("half");
  ASSERT_TRUE(model::WriteSafetensors(common::JoinPath(half, "adapter_model.safetensors"),
                                      {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", q.a}})
                  .ok());
  ASSERT_TRUE(common::WriteFileAtomically(common::JoinPath(half, "adapter_config.json"), good_config).ok());
  expect_error(half, "lora_B.weight is missing");

  // A foreign tensor.
  std::string foreign = testing::MakeTempDir("foreign");
  ASSERT_TRUE(model::WriteSafetensors(common::JoinPath(foreign, "adapter_model.safetensors"),
                                      {{"base_model.model.lm_head.lora_A.weight", q.a}})
                  .ok());
  ASSERT_TRUE(common::WriteFileAtomically(common::JoinPath(foreign, "adapter_config.json"), good_config).ok());
  expect_error(foreign, "base_model.model.lm_head.lora_A.weight is not a LoRA factor");

  // Pickle only.
  std::string pickle = testing::MakeTempDir("pickle");
  std::ofstream(common::JoinPath(pickle, "adapter_model.bin")) << "\x80\x02}q\x00.";
  ASSERT_TRUE(common::WriteFileAtomically(common::JoinPath(pickle, "adapter_config.json"), good_config).ok());
  expect_error(pickle, "pickle file and is never loaded");
}

TEST(PeftConfigTest, TargetsAndPatternsFollowPeft) {
  auto config = PeftAdapterConfig::FromJson(
      R"({"r":8,"lora_alpha":16,"target_modules":["q_proj","mlp.down_proj"],
          "rank_pattern":{"layers.3.self_attn.q_proj":2,"q_proj":4},"alpha_pattern":{"down_proj":1}})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->Targets("model.layers.0.self_attn.q_proj"));
  EXPECT_TRUE(config->Targets("model.layers.5.mlp.down_proj"));
  EXPECT_FALSE(config->Targets("model.layers.0.self_attn.k_proj"));
  EXPECT_FALSE(config->Targets("model.layers.0.self_attn.xq_proj"));
  EXPECT_EQ(config->RankFor("model.layers.3.self_attn.q_proj"), 2);  // first matching key wins
  EXPECT_EQ(config->RankFor("model.layers.4.self_attn.q_proj"), 4);
  EXPECT_EQ(config->RankFor("model.layers.4.mlp.down_proj"), 8);
  EXPECT_DOUBLE_EQ(config->ScaleFor("model.layers.4.mlp.down_proj"), 1.0 / 8);
  EXPECT_DOUBLE_EQ(config->ScaleFor("model.layers.4.self_attn.q_proj"), 16.0 / 4);
  auto regex = PeftAdapterConfig::FromJson(R"json({"r":4,"target_modules":".*\\.(q|v)_proj","use_rslora":true,"lora_alpha":6})json");
  ASSERT_TRUE(regex.ok());
  EXPECT_TRUE(regex->Targets("model.layers.1.self_attn.v_proj"));
  EXPECT_FALSE(regex->Targets("model.layers.1.self_attn.o_proj"));
  EXPECT_DOUBLE_EQ(regex->ScaleFor("model.layers.1.self_attn.v_proj"), 3.0);
  EXPECT_FALSE(PeftAdapterConfig::FromJson(R"json({"r":4,"target_modules":"(unclosed"})json").ok());
  // A hostile config nested a hundred thousand levels deep is refused before parsing (printing
  // such a value back in an error would overflow the stack).
  auto deep = PeftAdapterConfig::FromJson("{\"peft_type\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.status().message().find("nested too deeply"), std::string::npos) << deep.status();
}

// Inputs the fuzzer found (tests/fuzz/regressions/peft_config): each used to throw out of the
// parser (ending the server) or to hit undefined behaviour in std::regex; now each is refused.
TEST(PeftAdapterTest, ConfigsThatOnceCrashedAreRefused) {
  struct Case {
    std::string json;
    std::string words;
  };
  const std::vector<Case> cases = {
      {R"json({"r":4,"target_modules":["q_proj"],"use_rslora":8})json", "\"use_rslora\" must be true or false"},
      {R"json({"r":4,"target_modules":["q_proj"],"use_dora":"no"})json", "\"use_dora\" must be true or false"},
      {R"json({"r":4,"target_modules":".*q\\k<missing>(v_proj)"})json", "the target_modules regex is refused"},
      {R"json({"r":4,"target_modules":""})json", "\"target_modules\" must be a non-empty list or a regex string"},
      {R"json({"r":4,"target_modules":"((a{900}){900}){900}"})json", "the target_modules regex is refused"},
      {R"json({"r":4,"target_modules":["q_proj"],"rank_pattern":{")json" + std::string(2000, 'x') + R"json(":2}})json",
       "rank_pattern has a pattern longer than 1024 bytes"},
  };
  for (const Case& test : cases) {
    auto config = PeftAdapterConfig::FromJson(test.json);
    ASSERT_FALSE(config.ok()) << test.json;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(config.status().message().find(test.words), std::string::npos) << config.status();
  }
  // Real patterns, counted repetition included, still pass.
  auto layers = PeftAdapterConfig::FromJson(
      R"json({"r":4,"target_modules":"model\\.layers\\.\\d{1,2}\\.self_attn\\.(q|v)_proj","use_rslora":null})json");
  ASSERT_TRUE(layers.ok()) << layers.status();
  EXPECT_TRUE(layers->Targets("model.layers.11.self_attn.q_proj"));
  EXPECT_FALSE(layers->Targets("model.layers.111.self_attn.q_proj"));
  EXPECT_FALSE(layers->use_rslora) << "null is absent";
  // A back-reference number that overflowed std::regex's parser is plain text to PCRE2.
  EXPECT_TRUE(PeftAdapterConfig::FromJson(R"json({"r":4,"target_modules":".*q\\8888888888888888888888(v_proj)"})json").ok());
  // A pattern that backtracks exponentially (it once hung std::regex) matches nothing, at once.
  auto backtracking = PeftAdapterConfig::FromJson(R"json({"r":4,"target_modules":"(.*)*\\.(x_proj)"})json");
  ASSERT_TRUE(backtracking.ok()) << backtracking.status();
  const auto started = std::chrono::steady_clock::now();
  EXPECT_FALSE(backtracking->Targets("model.layers.11.self_attn.q_proj.model.layers.11.self_attn.q_proj"));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(1));
}

}  // namespace
}  // namespace deltaserve::deltas
