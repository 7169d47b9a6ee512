#include "tools/demo_model.h"

#include <sys/stat.h>

#include <cmath>
#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/common/file_util.h"
#include "server/deltas/peft_adapter.h"
#include "server/model/llama_weights.h"
#include "server/model/safetensors_tensor.h"
#include "server/model/sentencepiece_bridge.h"

namespace deltaserve::tools {
namespace {

// The demo tokenizer is trained on a generated corpus that cannot fill more pieces than this.
constexpr int64_t kLargestTrainedVocab = 4000;

// SplitMix64: a tiny, portable, fixed-seed generator, so the demo weights are identical on
// every machine and libtorch version.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return (Next() >> 11) * (1.0 / 9007199254740992.0); }
  double Normal() {
    double u1 = Uniform(), u2 = Uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
  size_t Pick(size_t count) { return static_cast<size_t>(Next() % count); }

 private:
  uint64_t state_;
};

at::Tensor NormalTensor(Random& random, const std::vector<int64_t>& shape, double stddev) {
  at::Tensor tensor = at::empty(shape, at::kFloat);
  float* data = tensor.data_ptr<float>();
  for (int64_t i = 0; i < tensor.numel(); ++i) data[i] = static_cast<float>(random.Normal() * stddev);
  return tensor;
}

// A generated corpus: English-like sentences with a sprinkling of accented, CJK and emoji
// text, so the tokenizer has multi-byte characters and byte-fallback pieces.
std::string Corpus(uint64_t seed) {
  static const char* kSubjects[] = {"the cat", "a small robot", "the old river", "my neighbour",
                                    "the engineer", "a quiet student", "the red fox", "our team",
                                    "the server", "a distant star", "the baker", "every model"};
  static const char* kVerbs[] = {"reads", "builds", "follows", "watches", "paints", "carries",
                                 "finds", "remembers", "answers", "serves", "measures", "loves"};
  static const char* kObjects[] = {"a long letter", "the blue door", "seven apples",
                                   "the morning news", "a broken clock", "the mountain path",
                                   "an open window", "the last train", "a café au lait",
                                   "the naïve plan", "über fast tokens", "a warm bowl of soup"};
  static const char* kEndings[] = {"before dawn", "in the garden", "with great care",
                                   "near the harbour", "after lunch", "under the bridge",
                                   "on Tuesday", "for the first time", "in Tōkyō", "again"};
  static const char* kRare[] = {"日本語のテキスト", "你好，世界", "emoji 🙂 and 🚀",
                                "naïve façade", "Ελληνικά", "Привет"};
  Random random(seed);
  std::ostringstream text;
  for (int line = 0; line < 4000; ++line) {
    text << kSubjects[random.Pick(12)] << ' ' << kVerbs[random.Pick(12)] << ' '
         << kObjects[random.Pick(12)] << ' ' << kEndings[random.Pick(10)];
    if (random.Pick(7) == 0) text << ", " << random.Pick(1000) << " times";
    text << ".";
    if (random.Pick(40) == 0) text << ' ' << kRare[random.Pick(6)];
    text << '\n';
  }
  return text.str();
}

absl::Status TrainTokenizer(const std::string& directory, int vocab_size, uint64_t seed) {
  std::string corpus_path = common::JoinPath(directory, ".corpus.txt");
  {
    std::ofstream corpus(corpus_path);
    corpus << Corpus(seed);
    if (!corpus) return absl::InternalError("cannot write " + corpus_path);
  }
  std::ostringstream args;
  args << "--input=" << corpus_path << " --model_prefix=" << common::JoinPath(directory, "tokenizer")
       << " --vocab_size=" << vocab_size
       << " --model_type=bpe --byte_fallback=true --character_coverage=0.995"
       << " --hard_vocab_limit=false --num_threads=1 --unk_id=0 --bos_id=1 --eos_id=2"
       << " --pad_id=-1 --minloglevel=2 --split_digits=true";
  std::string error;
  bool trained = model::sentencepiece_bridge::Train(args.str(), &error);
  std::remove(corpus_path.c_str());
  std::remove(common::JoinPath(directory, "tokenizer.vocab").c_str());
  if (!trained) return absl::InternalError("SentencePiece training failed: " + error);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<model::ModelConfig> DemoModelConfig(const DemoModelOptions& options) {
  model::ModelConfig config;
  config.architecture = options.architecture;
  if (options.size == "tiny") {
    config.hidden_size = 64;
    config.intermediate_size = 160;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.max_position_embeddings = 512;
  } else if (options.size == "small") {
    config.hidden_size = 256;
    config.intermediate_size = 688;
    config.num_hidden_layers = 4;
    config.num_attention_heads = 8;
    config.num_key_value_heads = 4;
    config.max_position_embeddings = 2048;
  } else if (options.size == "medium") {
    config.hidden_size = 512;
    config.intermediate_size = 1536;
    config.num_hidden_layers = 12;
    config.num_attention_heads = 8;
    config.num_key_value_heads = 4;
    config.max_position_embeddings = 4096;
  } else if (options.size == "llama2-7b-shape") {
    config.hidden_size = 4096;
    config.intermediate_size = 11008;
    config.num_hidden_layers = 32;
    config.num_attention_heads = 32;
    config.num_key_value_heads = 32;
    config.max_position_embeddings = 4096;
    config.vocab_size = 32000;
  } else if (options.size == "llama3-8b-shape") {
    config.hidden_size = 4096;
    config.intermediate_size = 14336;
    config.num_hidden_layers = 32;
    config.num_attention_heads = 32;
    config.num_key_value_heads = 8;
    config.max_position_embeddings = 8192;
    config.vocab_size = 128256;
    config.rope_theta = 500000.0;
  } else {
    return absl::InvalidArgumentError(
        "--size must be tiny, small, medium, llama2-7b-shape or llama3-8b-shape, not \"" + options.size + "\"");
  }
  if (options.layers < 0) return absl::InvalidArgumentError("--layers must be >= 0");
  if (options.layers > 0) config.num_hidden_layers = options.layers;
  config.head_dim = config.hidden_size / config.num_attention_heads;
  if (config.vocab_size == 0) config.vocab_size = options.size == "tiny" ? 512 : options.size == "small" ? 2000 : 4000;
  config.rms_norm_eps = 1e-5;
  config.rope_scaling = options.rope_scaling;
  config.tie_word_embeddings = options.tie_word_embeddings;
  config.attention_qkv_bias = options.architecture == "Qwen2ForCausalLM";
  config.bos_token_ids = {1};
  config.eos_token_ids = {2};
  config.torch_dtype = options.dtype == at::kHalf       ? "float16"
                       : options.dtype == at::kBFloat16 ? "bfloat16"
                                                        : "float32";
  return config;
}

absl::Status WriteDemoModel(const std::string& directory, const DemoModelOptions& options) {
  absl::StatusOr<model::ModelConfig> maybe_config = DemoModelConfig(options);
  if (!maybe_config.ok()) return maybe_config.status();
  model::ModelConfig config = *maybe_config;
  ::mkdir(directory.c_str(), 0755);
  if (!common::PathExists(directory)) return absl::InternalError("cannot create " + directory);

  std::string tokenizer_path = common::JoinPath(directory, "tokenizer.model");
  if (!options.tokenizer_from.empty()) {
    absl::StatusOr<std::string> bytes =
        common::ReadFileToString(common::JoinPath(options.tokenizer_from, "tokenizer.model"));
    if (!bytes.ok()) return bytes.status();
    absl::Status written = common::WriteFileAtomically(tokenizer_path, *bytes);
    if (!written.ok()) return written;
  } else {
    const int tokenizer_vocab = static_cast<int>(std::min<int64_t>(config.vocab_size, kLargestTrainedVocab));
    absl::Status trained = TrainTokenizer(directory, tokenizer_vocab, options.seed);
    if (!trained.ok()) return trained;
  }
  std::string error;
  auto processor = model::sentencepiece_bridge::Processor::Load(tokenizer_path, &error);
  if (processor == nullptr) return absl::InternalError("cannot reload " + tokenizer_path + ": " + error);
  // The demo sizes' vocabulary is the tokenizer's; real shapes keep theirs, as checkpoints whose
  // embedding has more rows than the tokenizer has pieces do.
  if (config.vocab_size <= kLargestTrainedVocab) config.vocab_size = processor->PieceSize();

  // Tensors are generated one at a time while the file is written (a full-depth real shape is
  // larger than memory in float32), in the order the weights have always been drawn from the
  // generator, so the demo models keep their values.
  Random random(options.seed);
  std::vector<model::TensorSpec> specs;
  for (const auto& [name, shape] : model::ExpectedTensorShapes(config)) specs.push_back({name, options.dtype, shape});
  auto produce = [&random, &options](const model::TensorSpec& spec) -> absl::StatusOr<at::Tensor> {
    const std::string& name = spec.name;
    const std::vector<int64_t>& shape = spec.shape;
    at::Tensor tensor;
    if (name.find("norm") != std::string::npos) {
      tensor = at::ones(shape, at::kFloat) + NormalTensor(random, shape, 0.05);
    } else if (name.find("bias") != std::string::npos) {
      tensor = NormalTensor(random, shape, 0.1);
    } else if (name == "model.embed_tokens.weight") {
      tensor = NormalTensor(random, shape, 1.0);
    } else if (name == "lm_head.weight") {
      tensor = NormalTensor(random, shape, 3.0 / std::sqrt(static_cast<double>(shape[1])));
    } else {
      tensor = NormalTensor(random, shape, 1.0 / std::sqrt(static_cast<double>(shape[1])));
    }
    return tensor.to(options.dtype);
  };
  absl::Status status = model::WriteSafetensorsStreamed(common::JoinPath(directory, "model.safetensors"),
                                                        specs, produce, {{"format", "pt"}});
  if (!status.ok()) return status;
  status = common::WriteFileAtomically(common::JoinPath(directory, "config.json"), config.ToJson());
  if (!status.ok()) return status;
  // The chat template is in the style of Llama 2's ([INST] turns, a <<SYS>> block).
  const nlohmann::ordered_json tokenizer_config = {
      {"add_bos_token", true},
      {"add_eos_token", false},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"},
      {"unk_token", "<unk>"},
      {"tokenizer_class", "LlamaTokenizer"},
      {"chat_template", kDemoChatTemplate}};
  status = common::WriteFileAtomically(common::JoinPath(directory, "tokenizer_config.json"),
                                       tokenizer_config.dump(2) + "\n");
  if (!status.ok()) return status;
  return common::WriteFileAtomically(common::JoinPath(directory, "generation_config.json"),
                                     "{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2\n}\n");
}

absl::Status WriteDemoAdapters(const std::string& model_directory, const std::string& adapters_directory,
                               int count, int rank, uint64_t base_seed) {
  if (count < 0 || rank <= 0) return absl::InvalidArgumentError("--adapters must be >= 0 and --rank > 0");
  absl::StatusOr<model::ModelConfig> config =
      model::ModelConfig::FromFile(common::JoinPath(model_directory, "config.json"));
  if (!config.ok()) return config.status();
  ::mkdir(adapters_directory.c_str(), 0755);
  for (int index = 0; index < count; ++index) {
    Random random(base_seed + index);
    deltas::DeltaSet set(config->num_hidden_layers);
    for (int64_t layer = 0; layer < config->num_hidden_layers; ++layer) {
      for (int projection = 0; projection < deltas::kProjectionCount; ++projection) {
        const auto kind = static_cast<model::Projection>(projection);
        const auto [out, in] = deltas::ProjectionShape(*config, kind);
        // Small enough that adapters change the output without swamping the base.
        set.Add(layer, kind,
                {NormalTensor(random, {rank, in}, 1.0 / std::sqrt(static_cast<double>(in))),
                 NormalTensor(random, {out, rank}, 0.5 / std::sqrt(static_cast<double>(rank))), 2.0});
      }
    }
    deltas::PeftAdapterConfig adapter_config;
    adapter_config.r = rank;
    adapter_config.lora_alpha = 2.0 * rank;
    adapter_config.base_model_name_or_path = model_directory;
    char name[32];
    std::snprintf(name, sizeof(name), "demo-%03d", index);
    absl::Status status =
        deltas::WritePeftAdapter(common::JoinPath(adapters_directory, name), adapter_config, set);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace deltaserve::tools
