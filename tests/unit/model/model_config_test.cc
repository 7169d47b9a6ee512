// config.json parsing for the three supported architectures, rope scaling and errors; and the
// RoPE inverse frequencies against the published piecewise definitions.
#include <cmath>

#include <gtest/gtest.h>

#include "server/model/model_config.h"
#include "server/model/rope.h"

namespace deltaserve::model {
namespace {

constexpr char kLlama31[] = R"({
  "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": false,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]})";

TEST(ModelConfigTest, ParsesLlama31) {
  auto config = ModelConfig::FromJson(kLlama31);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_EQ(config->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(config->eos_token_ids, std::vector<int32_t>({128001, 128008, 128009}));
  EXPECT_FALSE(config->attention_qkv_bias);
}

TEST(ModelConfigTest, Qwen2HasQkvBias) {
  auto config = ModelConfig::FromJson(R"({"architectures":["Qwen2ForCausalLM"],"hidden_size":64,
      "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
      "vocab_size":100,"tie_word_embeddings":true})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->attention_qkv_bias);
  EXPECT_FALSE(config->attention_output_bias);
  EXPECT_TRUE(config->tie_word_embeddings);
}

TEST(ModelConfigTest, RoundTripsThroughToJson) {
  auto config = ModelConfig::FromJson(kLlama31);
  ASSERT_TRUE(config.ok());
  auto again = ModelConfig::FromJson(config->ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(again->hidden_size, 4096);
}

TEST(ModelConfigTest, ExplainsErrors) {
  auto expect_error = [](const std::string& json, const std::string& fragment) {
    auto config = ModelConfig::FromJson(json);
    ASSERT_FALSE(config.ok());
    EXPECT_NE(config.status().message().find(fragment), std::string::npos) << config.status();
  };
  expect_error("[]", "not a JSON object");
  expect_error(R"({"architectures":["GPT2LMHeadModel"]})", "not supported");
  expect_error(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64})", "vocab_size");
  expect_error(R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,
      "intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3})",
               "multiple of num_key_value_heads");
  expect_error(R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,
      "intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,
      "rope_scaling":{"type":"yarn","factor":2}})",
               "yarn");
  expect_error(R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,
      "intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"hidden_act":"gelu"})",
               "gelu");
}

TEST(RopeTest, PlainAndLinearFrequencies) {
  ModelConfig config;
  config.head_dim = 8;
  config.rope_theta = 10000;
  std::vector<double> plain = RopeInverseFrequencies(config);
  ASSERT_EQ(plain.size(), 4u);
  EXPECT_DOUBLE_EQ(plain[0], 1.0);
  EXPECT_NEAR(plain[1], 0.1, 1e-12);   // 10000^(-2/8)
  EXPECT_NEAR(plain[3], 0.001, 1e-12);  // 10000^(-6/8)
  config.rope_scaling.type = RopeScalingType::kLinear;
  config.rope_scaling.factor = 4;
  std::vector<double> linear = RopeInverseFrequencies(config);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_NEAR(linear[i], plain[i] / 4, 1e-15);
}

TEST(RopeTest, Llama3ScalingMatchesTheDefinition) {
  auto config = ModelConfig::FromJson(kLlama31);
  ASSERT_TRUE(config.ok());
  std::vector<double> scaled = RopeInverseFrequencies(*config);
  ASSERT_EQ(scaled.size(), 64u);
  // Highest frequency: wavelength 2*pi < 8192/4, unchanged.
  EXPECT_DOUBLE_EQ(scaled[0], 1.0);
  // Lowest: wavelength far above 8192/1, divided by the factor.
  EXPECT_NEAR(scaled[63], std::pow(500000.0, -126.0 / 128) / 8, 1e-18);
  // i = 30 lies in the interpolated band (wavelength ~2948): hand-computed value.
  const double base = std::pow(500000.0, -60.0 / 128);
  const double wavelength = 2 * M_PI / base;
  ASSERT_GT(wavelength, 8192.0 / 4);
  ASSERT_LT(wavelength, 8192.0 / 1);
  const double smooth = (8192.0 / wavelength - 1.0) / (4.0 - 1.0);
  EXPECT_NEAR(scaled[30], (1 - smooth) * base / 8 + smooth * base, 1e-15);
  // By hand: base = e^(-0.46875 ln 500000) = 0.0021311, wavelength 2948.3, smooth 0.59285,
  // 0.40715 * 0.0021311 / 8 + 0.59285 * 0.0021311 = 0.0013719.
  EXPECT_NEAR(scaled[30], 0.0013719, 2e-7);
}

TEST(RopeTest, ApplyRotaryRotatesPairs) {
  // A single head of dimension 2 at position p is rotated by angle p * 1.0.
  at::Tensor x = at::tensor({1.0f, 0.0f}).view({1, 1, 2});
  at::Tensor inverse = at::tensor({1.0}, at::kDouble);
  auto [cos, sin] = RotaryTables(inverse, at::tensor({3}, at::kLong), at::kFloat);
  at::Tensor rotated = ApplyRotary(x, cos, sin).view({2});
  EXPECT_NEAR(rotated[0].item<float>(), std::cos(3.0), 1e-6);
  EXPECT_NEAR(rotated[1].item<float>(), std::sin(3.0), 1e-6);
}

}  // namespace
}  // namespace deltaserve::model
