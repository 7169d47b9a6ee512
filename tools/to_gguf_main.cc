// deltaserve-to-gguf: writes a model directory (and optionally PEFT LoRA adapters) as GGUF files
// for llama.cpp, to run the same weights in both engines (bench/run_llama_cpp.sh).
//   deltaserve-to-gguf --model-dir DIR --out model.gguf [--adapters A,B,... --adapters-out DIR]
// Each adapter directory's GGUF goes to --adapters-out/<directory name>.gguf.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "server/common/file_util.h"
#include "server/common/flag_names.h"
#include "tools/gguf_export.h"

ABSL_FLAG(std::string, model_dir, "", "Hugging Face model directory (Llama or Mistral, SentencePiece tokenizer)");
ABSL_FLAG(std::string, out, "", "GGUF file to write for the model");
ABSL_FLAG(std::string, type, "f32", "the matrices' type in the file: f32, f16 or q8_0 (norms stay f32)");
ABSL_FLAG(std::string, adapters, "", "comma-separated PEFT LoRA adapter directories to convert too");
ABSL_FLAG(std::string, adapters_out, "", "directory for the adapters' GGUF files (NAME.gguf each)");

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> arguments = deltaserve::common::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  if (model_dir.empty() || absl::GetFlag(FLAGS_out).empty()) {
    std::fprintf(stderr, "--model-dir and --out are required\n");
    return 2;
  }
  const std::string type_name = absl::GetFlag(FLAGS_type);
  deltaserve::tools::GgufTensorType type;
  if (type_name == "f32") {
    type = deltaserve::tools::GgufTensorType::kF32;
  } else if (type_name == "f16") {
    type = deltaserve::tools::GgufTensorType::kF16;
  } else if (type_name == "q8_0") {
    type = deltaserve::tools::GgufTensorType::kQ8_0;
  } else {
    std::fprintf(stderr, "--type must be f32, f16 or q8_0, not \"%s\"\n", type_name.c_str());
    return 2;
  }
  absl::Status status = deltaserve::tools::WriteGgufModel(model_dir, absl::GetFlag(FLAGS_out), type);
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", model_dir.c_str(), status.ToString().c_str());
    return 1;
  }
  const std::string adapters = absl::GetFlag(FLAGS_adapters);
  if (adapters.empty()) return 0;
  const std::string adapters_out = absl::GetFlag(FLAGS_adapters_out);
  if (adapters_out.empty()) {
    std::fprintf(stderr, "--adapters needs --adapters-out\n");
    return 2;
  }
  for (const std::string& adapter : std::vector<std::string>(absl::StrSplit(adapters, ',', absl::SkipEmpty()))) {
    std::string name = adapter.substr(0, adapter.find_last_not_of('/') + 1);
    name = name.substr(name.find_last_of('/') + 1);
    status = deltaserve::tools::WriteGgufLora(model_dir, adapter,
                                              deltaserve::common::JoinPath(adapters_out, name + ".gguf"));
    if (!status.ok()) {
      std::fprintf(stderr, "%s: %s\n", adapter.c_str(), status.ToString().c_str());
      return 1;
    }
  }
  return 0;
}
