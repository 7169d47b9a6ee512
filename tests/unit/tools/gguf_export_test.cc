// GGUF export, read back by a minimal GGUF reader written here from the format's description
// (header, typed key/values, tensor descriptions with fastest-varying dimension first, data
// aligned to 32 bytes), and compared with the model's own tensors: the q/k row permutation is
// checked element by element against the pair layout it must produce.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include <c10/core/InferenceMode.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include "server/common/file_util.h"
#include "server/deltas/peft_adapter.h"
#include "server/model/llama_model.h"
#include "tests/support/test_models.h"
#include "tools/demo_model.h"
#include "tools/gguf_export.h"

namespace deltaserve::tools {
namespace {

struct GgufTensor {
  std::vector<uint64_t> dims;  // fastest-varying first
  uint32_t type = 0;
  const float* data = nullptr;
};

struct GgufFile {
  std::string bytes;
  uint32_t version = 0;
  std::map<std::string, std::string> strings;
  std::map<std::string, double> numbers;
  std::map<std::string, uint64_t> array_lengths;
  std::map<std::string, GgufTensor> tensors;
};

class Reader {
 public:
  explicit Reader(const std::string& bytes) : bytes_(bytes) {}
  template <typename T>
  T Get() {
    T value;
    std::memcpy(&value, bytes_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return value;
  }
  std::string String() {
    const uint64_t size = Get<uint64_t>();
    std::string value = bytes_.substr(at_, size);
    at_ += size;
    return value;
  }
  size_t at() const { return at_; }

 private:
  const std::string& bytes_;
  size_t at_ = 0;
};

GgufFile ReadGguf(const std::string& path) {
  GgufFile file;
  file.bytes = common::ReadFileToString(path).value();
  Reader reader(file.bytes);
  EXPECT_EQ(reader.Get<uint32_t>(), 0x46554747u);  // "GGUF"
  file.version = reader.Get<uint32_t>();
  const uint64_t tensor_count = reader.Get<uint64_t>();
  const uint64_t kv_count = reader.Get<uint64_t>();
  for (uint64_t i = 0; i < kv_count; ++i) {
    const std::string key = reader.String();
    const uint32_t type = reader.Get<uint32_t>();
    if (type == 8) {
      file.strings[key] = reader.String();
    } else if (type == 4) {
      file.numbers[key] = reader.Get<uint32_t>();
    } else if (type == 6) {
      file.numbers[key] = reader.Get<float>();
    } else if (type == 9) {
      const uint32_t item_type = reader.Get<uint32_t>();
      const uint64_t length = reader.Get<uint64_t>();
      file.array_lengths[key] = length;
      for (uint64_t j = 0; j < length; ++j) {
        if (item_type == 8) {
          reader.String();
        } else {
          EXPECT_TRUE(item_type == 5 || item_type == 6) << key;
          reader.Get<uint32_t>();
        }
      }
    } else {
      ADD_FAILURE() << "unexpected value type " << type << " of " << key;
      return file;
    }
  }
  std::vector<std::pair<std::string, uint64_t>> offsets;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    const std::string name = reader.String();
    GgufTensor& tensor = file.tensors[name];
    const uint32_t dims = reader.Get<uint32_t>();
    for (uint32_t d = 0; d < dims; ++d) tensor.dims.push_back(reader.Get<uint64_t>());
    tensor.type = reader.Get<uint32_t>();
    offsets.push_back({name, reader.Get<uint64_t>()});
  }
  const size_t data_start = (reader.at() + 31) / 32 * 32;
  for (const auto& [name, offset] : offsets) {
    EXPECT_EQ(offset % 32, 0u) << name;
    file.tensors[name].data = reinterpret_cast<const float*>(file.bytes.data() + data_start + offset);
  }
  return file;
}

// Row `row` of a [heads * head_dim, columns] matrix in the exported pair layout holds which row
// of the Hugging Face "rotate half" layout: pair element (i, c) of a head came from c * d/2 + i.
int64_t SourceRow(int64_t row, int64_t head_dim) {
  const int64_t head = row / head_dim, within = row % head_dim;
  return head * head_dim + (within % 2) * (head_dim / 2) + within / 2;
}

void ExpectRowsPermuted(const GgufTensor& exported, const at::Tensor& original, int64_t head_dim) {
  at::Tensor source = original.contiguous();
  const int64_t rows = source.size(0), columns = source.size(1);
  ASSERT_EQ(exported.dims, (std::vector<uint64_t>{static_cast<uint64_t>(columns), static_cast<uint64_t>(rows)}));
  for (int64_t row = 0; row < rows; ++row) {
    const float* expected = source.data_ptr<float>() + SourceRow(row, head_dim) * columns;
    ASSERT_EQ(std::memcmp(exported.data + row * columns, expected, columns * sizeof(float)), 0) << "row " << row;
  }
}

void ExpectSame(const GgufTensor& exported, const at::Tensor& original) {
  at::Tensor source = original.contiguous();
  std::vector<uint64_t> reversed(source.sizes().rbegin(), source.sizes().rend());
  ASSERT_EQ(exported.dims, reversed);
  EXPECT_EQ(exported.type, 0u);  // F32
  EXPECT_EQ(std::memcmp(exported.data, source.data_ptr<float>(), source.nbytes()), 0);
}

TEST(GgufExportTest, TheModelReadsBackWithItsShapesAndPairOrderedQueriesAndKeys) {
  c10::InferenceMode guard;
  const std::string out = testing::MakeTempDir("gguf") + "/model.gguf";
  ASSERT_TRUE(WriteGgufModel(testing::TinyModelDir(), out).ok());
  auto model = model::LlamaModel::Load(testing::TinyModelDir(), {});
  ASSERT_TRUE(model.ok());
  const model::ModelConfig& config = (*model)->config();
  GgufFile file = ReadGguf(out);
  EXPECT_EQ(file.version, 3u);
  EXPECT_EQ(file.strings["general.architecture"], "llama");
  EXPECT_EQ(file.numbers["llama.block_count"], config.num_hidden_layers);
  EXPECT_EQ(file.numbers["llama.attention.head_count_kv"], config.num_key_value_heads);
  EXPECT_FLOAT_EQ(file.numbers["llama.rope.freq_base"], config.rope_theta);
  EXPECT_EQ(file.array_lengths["tokenizer.ggml.tokens"], static_cast<uint64_t>(config.vocab_size));
  EXPECT_EQ(file.tensors.size(), 2 + 9 * config.num_hidden_layers + (config.tie_word_embeddings ? 0 : 1));
  const model::LlamaWeights& weights = (*model)->weights();
  ExpectSame(file.tensors["token_embd.weight"], weights.embed_tokens.Dense(at::kFloat));
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string block = "blk." + std::to_string(layer) + ".";
    const model::LayerWeights& w = weights.layers[layer];
    ExpectRowsPermuted(file.tensors[block + "attn_q.weight"], w.q_proj.Dense(at::kFloat), config.head_dim);
    ExpectRowsPermuted(file.tensors[block + "attn_k.weight"], w.k_proj.Dense(at::kFloat), config.head_dim);
    ExpectSame(file.tensors[block + "attn_v.weight"], w.v_proj.Dense(at::kFloat));
    ExpectSame(file.tensors[block + "ffn_down.weight"], w.down_proj.Dense(at::kFloat));
    ExpectSame(file.tensors[block + "ffn_norm.weight"], w.post_attention_norm);
  }
  ExpectSame(file.tensors["output_norm.weight"], weights.final_norm);
}

TEST(GgufExportTest, F16AndQ8_0MatricesDecodeToTheModelsWeightsWithinTheirRounding) {
  c10::InferenceMode guard;
  auto model = model::LlamaModel::Load(testing::TinyModelDir(), {});
  ASSERT_TRUE(model.ok());
  const at::Tensor original = (*model)->weights().layers[0].down_proj.Dense(at::kFloat).contiguous();
  const int64_t rows = original.size(0), columns = original.size(1);
  const float* expected = original.data_ptr<float>();
  for (GgufTensorType type : {GgufTensorType::kF16, GgufTensorType::kQ8_0}) {
    const std::string out = testing::MakeTempDir("gguf-narrow") + "/model.gguf";
    ASSERT_TRUE(WriteGgufModel(testing::TinyModelDir(), out, type).ok());
    GgufFile file = ReadGguf(out);
    EXPECT_EQ(file.numbers["general.file_type"], type == GgufTensorType::kF16 ? 1 : 7);
    EXPECT_EQ(file.tensors["blk.0.ffn_norm.weight"].type, 0u);  // norms stay F32
    const GgufTensor& down = file.tensors["blk.0.ffn_down.weight"];
    ASSERT_EQ(down.type, static_cast<uint32_t>(type));
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(down.data);
    if (type == GgufTensorType::kF16) {
      for (int64_t i = 0; i < rows * columns; ++i) {
        uint16_t bits;
        std::memcpy(&bits, bytes + 2 * i, 2);
        ASSERT_EQ(static_cast<float>(c10::Half(bits, c10::Half::from_bits())),
                  static_cast<float>(c10::Half(expected[i])))
            << i;
      }
      continue;
    }
    // Q8_0: blocks of 32 values, an f16 scale (amax / 127) then 32 int8 values.
    for (int64_t block = 0; block < rows * columns / 32; ++block) {
      const uint8_t* at = bytes + block * 34;
      uint16_t bits;
      std::memcpy(&bits, at, 2);
      const float scale = static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
      float largest = 0;
      for (int i = 0; i < 32; ++i) largest = std::max(largest, std::abs(expected[block * 32 + i]));
      EXPECT_NEAR(scale, largest / 127, largest / 127 * 1e-3) << block;
      for (int i = 0; i < 32; ++i) {
        const float decoded = scale * static_cast<float>(static_cast<int8_t>(at[2 + i]));
        // Half a step, plus what rounding the scale to f16 moves the largest value.
        ASSERT_LE(std::abs(decoded - expected[block * 32 + i]), scale * 0.5f + largest * 1e-3f) << block << " " << i;
      }
    }
  }
}

TEST(GgufExportTest, AnAdapterReadsBackWithScalesFoldedIntoB) {
  c10::InferenceMode guard;
  const std::string directory = testing::MakeTempDir("gguf-lora");
  ASSERT_TRUE(WriteDemoAdapters(testing::TinyModelDir(), directory, 1, 4).ok());
  const std::string out = directory + "/demo-000.gguf";
  ASSERT_TRUE(WriteGgufLora(testing::TinyModelDir(), directory + "/demo-000", out).ok());
  auto config = model::ModelConfig::FromFile(testing::TinyModelDir() + "/config.json");
  ASSERT_TRUE(config.ok());
  auto adapter = deltas::ReadPeftAdapter(directory + "/demo-000", *config, at::kFloat, at::kCPU);
  ASSERT_TRUE(adapter.ok());
  GgufFile file = ReadGguf(out);
  EXPECT_EQ(file.strings["general.type"], "adapter");
  EXPECT_EQ(file.strings["adapter.type"], "lora");
  EXPECT_EQ(file.numbers["adapter.lora.alpha"], 0);
  EXPECT_EQ(file.tensors.size(), 2u * 7 * config->num_hidden_layers);
  const deltas::LowRankFactor& q = adapter->deltas.Factors(1, model::Projection::kQuery)[0];
  ExpectSame(file.tensors["blk.1.attn_q.weight.lora_a"], q.a);
  ExpectRowsPermuted(file.tensors["blk.1.attn_q.weight.lora_b"], q.b * q.scale, config->head_dim);
  const deltas::LowRankFactor& up = adapter->deltas.Factors(0, model::Projection::kUp)[0];
  ExpectSame(file.tensors["blk.0.ffn_up.weight.lora_b"], up.b * up.scale);
}

TEST(GgufExportTest, ModelsOutsideTheLlamaLayoutAreRefusedWithTheReason) {
  DemoModelOptions options;
  options.architecture = "Qwen2ForCausalLM";
  const std::string qwen = testing::WriteModel(options, "gguf-qwen2");
  absl::Status status = WriteGgufModel(qwen, testing::MakeTempDir("gguf") + "/qwen2.gguf");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(status.message().find("Qwen2ForCausalLM"), std::string::npos) << status;
}

}  // namespace
}  // namespace deltaserve::tools
