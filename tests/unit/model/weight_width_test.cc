// Base weights kept at narrow widths (weight_matrix.h): the forward pass over bfloat16 and
// float16 weights against a float32 model holding exactly the same rounded values, int8 against
// the float32 model it was quantized from (stated bounds), and what loading keeps in memory.
#include <cmath>
#include <cstdio>
#include <optional>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "server/model/llama_model.h"
#include "tests/support/test_kv.h"
#include "tests/support/test_models.h"
#include "tools/demo_model.h"

namespace deltaserve::model {
namespace {

std::unique_ptr<LlamaModel> Load(const std::string& directory, std::optional<at::ScalarType> width) {
  ModelOptions options;
  options.weight_dtype = width;
  auto model = LlamaModel::Load(directory, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

// A float32 model whose matrices are exactly `narrow`'s, widened (and dequantized).
std::unique_ptr<LlamaModel> Widened(const LlamaModel& narrow) {
  LlamaWeights weights = narrow.weights();
  ForEachWeightMatrix(weights, [](WeightMatrix& matrix) { matrix = WeightMatrix{matrix.Dense(at::kFloat), at::Tensor()}; });
  return std::make_unique<LlamaModel>(narrow.config(), weights, ModelOptions{});
}

// Logits of every prompt position, then of `continuation` decoded one token per step through
// the KV cache (single-row steps), as one [prompt + continuation, vocab] tensor.
at::Tensor PrefillAndDecodeLogits(const LlamaModel& model, const std::vector<int64_t>& prompt,
                                  const std::vector<int64_t>& continuation) {
  const int64_t total = static_cast<int64_t>(prompt.size() + continuation.size());
  testing::TestKv kv = testing::MakeTestKv(model, 1, total);
  std::vector<at::Tensor> logits;
  ForwardBatch prefill;
  prefill.kv_arena = &kv.arena;
  prefill.token_ids = prompt;
  prefill.sequences.push_back({0, static_cast<int64_t>(prompt.size()), &kv.tables[0]});
  logits.push_back(model.Forward(prefill));
  int64_t position = static_cast<int64_t>(prompt.size());
  for (int64_t token : continuation) {
    ForwardBatch step;
    step.kv_arena = &kv.arena;
    step.token_ids = {token};
    step.sequences.push_back({position++, 1, &kv.tables[0]});
    logits.push_back(model.Forward(step));
  }
  return at::cat(logits, 0);
}

double RelativeError(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual - expected).abs().max().item<double>() / expected.abs().max().item<double>();
}

std::vector<int64_t> Tokens(int64_t count, int64_t vocab, int64_t seed) {
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < count; ++i) tokens.push_back(3 + (i * 131 + seed * 17) % (vocab - 3));
  return tokens;
}

TEST(WeightWidthTest, SixteenBitWeightsMatchAFloat32ForwardOverTheSameRoundedWeights) {
  c10::InferenceMode guard;
  const std::string& directory = testing::TinyModelDir();
  for (at::ScalarType width : {at::kBFloat16, at::kHalf}) {
    auto narrow = Load(directory, width);
    ASSERT_EQ(narrow->weight_width(), width);
    auto reference = Widened(*narrow);
    const int64_t vocab = narrow->config().vocab_size;
    // A short prompt and decode steps (the small-batch kernel), and a prompt longer than the
    // kernel's rows (at::linear over widened weights).
    for (int64_t prompt_length : {11, 300}) {
      const std::vector<int64_t> prompt = Tokens(prompt_length, vocab, prompt_length);
      const std::vector<int64_t> continuation = Tokens(6, vocab, 99);
      const at::Tensor actual = PrefillAndDecodeLogits(*narrow, prompt, continuation);
      const at::Tensor expected = PrefillAndDecodeLogits(*reference, prompt, continuation);
      EXPECT_LT(RelativeError(actual, expected), 1e-4) << width << " prompt " << prompt_length;
    }
  }
}

TEST(WeightWidthTest, TrainingReadsNarrowWeightsToo) {
  // Outside inference mode (fine-tuning, unlearning, edits) the generic operators widen them.
  auto narrow = Load(testing::TinyModelDir(), at::kBFloat16);
  auto reference = Widened(*narrow);
  ForwardBatch batch;
  batch.token_ids = Tokens(9, narrow->config().vocab_size, 5);
  batch.sequences.push_back({0, 9, nullptr});
  EXPECT_LT(RelativeError(narrow->Forward(batch), reference->Forward(batch)), 1e-4);
}

TEST(WeightWidthTest, ACheckpointKeepsItsWidthAndIsServedFromTheMappedFile) {
  tools::DemoModelOptions options;
  options.dtype = at::kBFloat16;
  const std::string bf16_directory = testing::WriteModel(options, "bf16-checkpoint");
  auto kept = Load(bf16_directory, std::nullopt);
  ASSERT_EQ(kept->weight_width(), at::kBFloat16);
  // Views into the mapping have storages libtorch did not allocate and cannot resize.
  EXPECT_FALSE(kept->weights().layers[0].gate_proj.values.storage().resizable());
  EXPECT_FALSE(kept->weights().lm_head.values.storage().resizable());

  auto widened = Load(bf16_directory, at::kFloat);  // asked for: a float32 copy
  ASSERT_EQ(widened->weight_width(), at::kFloat);
  EXPECT_TRUE(widened->weights().layers[0].gate_proj.values.storage().resizable());
  EXPECT_GT(widened->WeightBytes(), kept->WeightBytes() * 19 / 10);  // the norms stay float32

  auto quantized = Load(bf16_directory, at::kChar);
  ASSERT_EQ(quantized->weight_width(), at::kChar);
  EXPECT_LT(quantized->WeightBytes(), kept->WeightBytes() * 6 / 10);
}

TEST(WeightWidthTest, WidthsOtherThanTheComputeDtypeAreRefusedWithItsReason) {
  ModelOptions options;
  options.dtype = at::kBFloat16;
  options.weight_dtype = at::kChar;
  auto refused = LlamaModel::Load(testing::TinyModelDir(), options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("use --dtype float32"), std::string::npos) << refused.status();
  EXPECT_FALSE(ParseWeightDtype("int4").ok());
  EXPECT_EQ(*ParseWeightDtype("auto"), std::nullopt);
  EXPECT_EQ(*ParseWeightDtype("bf16"), at::kBFloat16);
}

// Greedy continuation of `prompt` under `model`, through the KV cache.
std::vector<int64_t> Greedy(const LlamaModel& model, const std::vector<int64_t>& prompt, int64_t count) {
  testing::TestKv kv = testing::MakeTestKv(model, 1, static_cast<int64_t>(prompt.size()) + count);
  ForwardBatch prefill;
  prefill.kv_arena = &kv.arena;
  prefill.token_ids = prompt;
  prefill.sequences.push_back({0, static_cast<int64_t>(prompt.size()), &kv.tables[0]});
  prefill.logit_rows = {static_cast<int64_t>(prompt.size()) - 1};
  int64_t next = model.Forward(prefill).argmax(-1).item<int64_t>();
  std::vector<int64_t> tokens;
  int64_t position = static_cast<int64_t>(prompt.size());
  while (static_cast<int64_t>(tokens.size()) < count) {
    tokens.push_back(next);
    ForwardBatch step;
    step.kv_arena = &kv.arena;
    step.token_ids = {next};
    step.sequences.push_back({position++, 1, &kv.tables[0]});
    next = model.Forward(step).argmax(-1).item<int64_t>();
  }
  return tokens;
}

struct Int8Bounds {
  double mean_delta, max_delta, top1_agreement;
  int64_t same_prefix;
};

// int8 against the float32 model it was quantized from, over 64 greedy tokens of the float32
// model: mean and max |dlogprob| of the chosen tokens (teacher-forced), top-1 agreement, and the
// identical free-running greedy prefix, each within `bounds`.
void ExpectInt8WithinBounds(const std::string& directory, const std::string& name, const Int8Bounds& bounds) {
  c10::InferenceMode guard;
  auto full = Load(directory, at::kFloat);
  auto quantized = Load(directory, at::kChar);
  const std::vector<int64_t> prompt = Tokens(24, full->config().vocab_size, 3);
  constexpr int64_t kTokens = 64;
  const std::vector<int64_t> reference = Greedy(*full, prompt, kTokens);

  // Teacher-forced on the float32 continuation: log-probabilities of the tokens it chose, and
  // whether int8's top choice is the same at each of the 64 positions.
  std::vector<int64_t> forced(reference.begin(), reference.end() - 1);
  const int64_t first = static_cast<int64_t>(prompt.size()) - 1;
  const at::Tensor expected = at::log_softmax(PrefillAndDecodeLogits(*full, prompt, forced), -1).narrow(0, first, kTokens);
  const at::Tensor actual = at::log_softmax(PrefillAndDecodeLogits(*quantized, prompt, forced), -1).narrow(0, first, kTokens);
  const at::Tensor chosen = at::tensor(reference).unsqueeze(1);
  const at::Tensor delta = (actual.gather(1, chosen) - expected.gather(1, chosen)).abs();
  const double mean_delta = delta.mean().item<double>();
  const double max_delta = delta.max().item<double>();
  const double top1_agreement = actual.argmax(-1).eq(expected.argmax(-1)).to(at::kDouble).mean().item<double>();
  // Free-running: how many greedy tokens int8 produces before it first departs.
  const std::vector<int64_t> free_running = Greedy(*quantized, prompt, kTokens);
  int64_t same_prefix = 0;
  while (same_prefix < kTokens && free_running[same_prefix] == reference[same_prefix]) ++same_prefix;
  std::printf("int8 vs float32, %s, %ld tokens: mean |dlogprob| %.5f, max %.5f, top-1 agreement %.3f, "
              "identical greedy prefix %ld\n",
              name.c_str(), static_cast<long>(kTokens), mean_delta, max_delta, top1_agreement,
              static_cast<long>(same_prefix));
  EXPECT_LT(mean_delta, bounds.mean_delta);
  EXPECT_LT(max_delta, bounds.max_delta);
  EXPECT_GE(top1_agreement, bounds.top1_agreement);
  EXPECT_GE(same_prefix, bounds.same_prefix);
}

TEST(WeightWidthTest, Int8StaysWithinStatedBoundsOfFloat32OnTheMediumDemoModel) {
  tools::DemoModelOptions options;
  options.size = "medium";
  // Per-channel scales, measured: mean 0.055, max 0.200, top-1 agreement 59/64, identical greedy
  // prefix 13 tokens (random weights: many near-ties between the top two tokens).
  ExpectInt8WithinBounds(testing::WriteModel(options, "medium"), "medium demo", {0.08, 0.3, 57.0 / 64, 8});
}

// Real layer shapes (Llama-2-7B: hidden 4096, intermediate 11008, vocab 32000), two layers, a
// bf16 checkpoint: the float32 model holds its values widened, int8 quantizes them.
TEST(WeightWidthTest, Int8StaysWithinStatedBoundsOfFloat32OnTheLlama2ShapedModel) {
  tools::DemoModelOptions options;
  options.size = "llama2-7b-shape";
  options.layers = 2;
  options.dtype = at::kBFloat16;
  // Per-channel scales, measured: mean 0.039, max 0.126, top-1 agreement 61/64, identical greedy
  // prefix 9 tokens (random weights' near-ties again). Takes ~90 s and ~4.3 GB.
  ExpectInt8WithinBounds(testing::WriteModel(options, "llama2-7b-shape"), "Llama-2-7B shapes, 2 layers",
                         {0.06, 0.2, 58.0 / 64, 6});
}

}  // namespace
}  // namespace deltaserve::model
