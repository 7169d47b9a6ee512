// The safetensors reader on hand-built files: every malformed input gives INVALID_ARGUMENT
// (never a crash), valid files read back exactly, and the writer's output reads back
// bit-identical. Also the model loader's shape and completeness checks and sharded checkpoints.
#include <cstring>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "server/common/file_util.h"
#include "server/model/llama_weights.h"
#include "server/model/safetensors_file.h"
#include "server/model/safetensors_tensor.h"
#include "tests/support/test_models.h"

namespace deltaserve::model {
namespace {

std::string FileBytes(const std::string& header, const std::string& data, int64_t length_override = -1) {
  uint64_t length = length_override >= 0 ? static_cast<uint64_t>(length_override) : header.size();
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((length >> (8 * i)) & 0xff));
  return bytes + header + data;
}

absl::StatusOr<SafetensorsFile> Parse(const std::string& bytes) {
  return SafetensorsFile::Parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "test");
}

void ExpectInvalid(const std::string& bytes, const std::string& fragment) {
  absl::StatusOr<SafetensorsFile> file = Parse(bytes);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_NE(file.status().message().find(fragment), std::string::npos) << file.status();
}

const std::string kEightBytes(8, '\x01');

TEST(SafetensorsTest, ReadsAValidFile) {
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  float values[2] = {1.5f, -2.0f};
  std::string data(reinterpret_cast<const char*>(values), 8);
  const std::string bytes = FileBytes(header, data);  // the parsed file points into it
  auto file = Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const StoredTensor* a = file->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->shape, std::vector<int64_t>({2}));
  auto tensor = ToTensor(*a, at::kFloat, at::kCPU);
  ASSERT_TRUE(tensor.ok());
  EXPECT_EQ(tensor->data_ptr<float>()[1], -2.0f);
  EXPECT_EQ(file->metadata().at("format"), "pt");
}

TEST(SafetensorsTest, RejectsTruncatedFiles) {
  ExpectInvalid("abc", "too short");
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ExpectInvalid(FileBytes(header, kEightBytes).substr(0, 20), "runs past the end");
  ExpectInvalid(FileBytes(header, "\x01\x02\x03"), "outside the data buffer");
}

TEST(SafetensorsTest, RejectsHugeHeaderLength) {
  ExpectInvalid(FileBytes("{}", "", int64_t{1} << 40), "exceeds the limit");
  ExpectInvalid(FileBytes("{}", "", (int64_t{1} << 62)), "exceeds the limit");
}

TEST(SafetensorsTest, RejectsMalformedJson) {
  ExpectInvalid(FileBytes("not json", ""), "not a JSON object");
  ExpectInvalid(FileBytes("{\"a\": [1, 2", ""), "not valid JSON");
  ExpectInvalid(FileBytes(std::string(1, '{') + std::string(100000, '['), ""), "nested too deeply");
  ExpectInvalid(FileBytes(R"({"a": 3})", ""), "exactly dtype, shape and data_offsets");
  ExpectInvalid(FileBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", kEightBytes),
                "exactly dtype");
  ExpectInvalid(FileBytes(R"({"__metadata__":{"k":1}})", ""), "not a string");
}

TEST(SafetensorsTest, RejectsUnknownDtypeAndBadShapes) {
  ExpectInvalid(FileBytes(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", kEightBytes),
                "unknown dtype");
  ExpectInvalid(FileBytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", kEightBytes),
                "non-negative integers");
  ExpectInvalid(FileBytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", kEightBytes),
                "need 12");
  ExpectInvalid(FileBytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})",
                          kEightBytes),
                "absurdly large");
  ExpectInvalid(FileBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", kEightBytes),
                "outside the data buffer");
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  ExpectInvalid(FileBytes(header, kEightBytes), "overlap");
}

TEST(SafetensorsTest, WriterOutputReadsBackBitIdentical) {
  std::string directory = testing::MakeTempDir("safetensors");
  std::string path = common::JoinPath(directory, "t.safetensors");
  at::Tensor f32 = at::randn({3, 5});
  at::Tensor f16 = at::randn({7}).to(at::kHalf);
  at::Tensor bf16 = at::randn({2, 2, 2}).to(at::kBFloat16);
  at::Tensor ints = at::arange(10, at::kLong);
  ASSERT_TRUE(WriteSafetensors(path, {{"f32", f32}, {"f16", f16}, {"bf16", bf16}, {"ints", ints}},
                               {{"note", "hello"}})
                  .ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("note"), "hello");
  for (const auto& [name, tensor] : std::vector<std::pair<std::string, at::Tensor>>{
           {"f32", f32}, {"f16", f16}, {"bf16", bf16}, {"ints", ints}}) {
    const StoredTensor* stored = file->Find(name);
    ASSERT_NE(stored, nullptr) << name;
    EXPECT_EQ(std::memcmp(stored->data, tensor.data_ptr(), stored->byte_size), 0) << name;
    auto loaded = ToTensor(*stored, tensor.scalar_type(), at::kCPU);
    ASSERT_TRUE(loaded.ok());
    EXPECT_TRUE(at::equal(*loaded, tensor)) << name;
  }
  // Same tensors, same bytes.
  std::string again = common::JoinPath(directory, "u.safetensors");
  ASSERT_TRUE(WriteSafetensors(again, {{"ints", ints}, {"bf16", bf16}, {"f16", f16}, {"f32", f32}},
                               {{"note", "hello"}})
                  .ok());
  EXPECT_EQ(*common::ReadFileToString(path), *common::ReadFileToString(again));
}

TEST(SafetensorsTest, MutatedFilesNeverCrash) {
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}})";
  const std::string valid = FileBytes(header, std::string(22, '\x3f'));
  std::mt19937 random(12345);
  for (int iteration = 0; iteration < 3000; ++iteration) {
    std::string bytes = valid;
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int edit = 0; edit < edits; ++edit) {
      switch (random() % 3) {
        case 0: bytes[random() % bytes.size()] = static_cast<char>(random()); break;
        case 1: bytes.resize(random() % bytes.size()); break;
        case 2: bytes.insert(8 + random() % (bytes.size() - 7), 1, "{}[]\":,0123456789-"[random() % 19]); break;
      }
      if (bytes.size() < 9) break;
    }
    auto file = Parse(bytes);
    if (!file.ok()) {
      EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
      continue;
    }
    const auto* begin = reinterpret_cast<const uint8_t*>(bytes.data());
    for (const auto& [name, tensor] : file->tensors()) {
      EXPECT_GE(tensor.data, begin);
      EXPECT_LE(tensor.data + tensor.byte_size, begin + bytes.size()) << name;
    }
  }
}

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = testing::WriteModel(tools::DemoModelOptions{}, "loader");
    config_ = *ModelConfig::FromFile(common::JoinPath(directory_, "config.json"));
    weights_ = *SafetensorsFile::Open(common::JoinPath(directory_, "model.safetensors"));
  }
  // Rewrites model.safetensors with `transform` applied to the list of tensors.
  void Rewrite(const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& transform) {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& [name, stored] : weights_.tensors()) {
      tensors.push_back({name, *ToTensor(stored, at::kFloat, at::kCPU)});
    }
    transform(tensors);
    ASSERT_TRUE(WriteSafetensors(common::JoinPath(directory_, "model.safetensors"), tensors).ok());
  }
  std::string directory_;
  ModelConfig config_;
  SafetensorsFile weights_;
};

TEST_F(LoaderTest, WrongShapeNamesTheTensor) {
  Rewrite([](auto& tensors) {
    for (auto& [name, tensor] : tensors) {
      if (name == "model.layers.1.mlp.up_proj.weight") tensor = at::zeros({3, 3});
    }
  });
  auto weights = LoadLlamaWeights(directory_, config_, WeightLoadOptions{});
  ASSERT_FALSE(weights.ok());
  EXPECT_NE(weights.status().message().find("model.layers.1.mlp.up_proj.weight has shape [3, 3]"),
            std::string::npos)
      << weights.status();
}

TEST_F(LoaderTest, MissingTensorNamesTheTensor) {
  Rewrite([](auto& tensors) {
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                 [](const auto& entry) { return entry.first == "model.norm.weight"; }),
                  tensors.end());
  });
  auto weights = LoadLlamaWeights(directory_, config_, WeightLoadOptions{});
  ASSERT_FALSE(weights.ok());
  EXPECT_NE(weights.status().message().find("model.norm.weight is missing"), std::string::npos);
}

TEST_F(LoaderTest, IntegerWeightsAreRejected) {
  Rewrite([](auto& tensors) {
    for (auto& [name, tensor] : tensors) {
      if (name == "model.norm.weight") tensor = tensor.to(at::kInt);
    }
  });
  auto weights = LoadLlamaWeights(directory_, config_, WeightLoadOptions{});
  ASSERT_FALSE(weights.ok());
  EXPECT_NE(weights.status().message().find("must be F32, F16 or BF16"), std::string::npos);
}

TEST_F(LoaderTest, ShardedCheckpointLoadsLikeTheSingleFile) {
  auto single = LoadLlamaWeights(directory_, config_, WeightLoadOptions{});
  ASSERT_TRUE(single.ok());
  std::vector<std::pair<std::string, at::Tensor>> first, second;
  std::string weight_map;
  bool toggle = false;
  for (const auto& [name, stored] : weights_.tensors()) {
    (toggle ? first : second).push_back({name, *ToTensor(stored, at::kFloat, at::kCPU)});
    weight_map += (weight_map.empty() ? "" : ",") + std::string("\"") + name + "\":\"" +
                  (toggle ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors") + "\"";
    toggle = !toggle;
  }
  ASSERT_TRUE(WriteSafetensors(common::JoinPath(directory_, "model-00001-of-00002.safetensors"), first).ok());
  ASSERT_TRUE(WriteSafetensors(common::JoinPath(directory_, "model-00002-of-00002.safetensors"), second).ok());
  ASSERT_TRUE(common::WriteFileAtomically(common::JoinPath(directory_, "model.safetensors.index.json"),
                                          "{\"metadata\":{},\"weight_map\":{" + weight_map + "}}")
                  .ok());
  std::remove(common::JoinPath(directory_, "model.safetensors").c_str());
  auto sharded = LoadLlamaWeights(directory_, config_, WeightLoadOptions{});
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  EXPECT_TRUE(at::equal(sharded->layers[0].q_proj.values, single->layers[0].q_proj.values));
  EXPECT_TRUE(at::equal(sharded->lm_head.values, single->lm_head.values));
}

TEST_F(LoaderTest, PickleCheckpointsAreRefused) {
  std::remove(common::JoinPath(directory_, "model.safetensors").c_str());
  std::ofstream(common::JoinPath(directory_, "pytorch_model.bin")) << "pickle";
  auto weights = LoadLlamaWeights(directory_, config_, WeightLoadOptions{});
  ASSERT_FALSE(weights.ok());
  EXPECT_NE(weights.status().message().find("pickled .bin files are refused"), std::string::npos);
}

}  // namespace
}  // namespace deltaserve::model
