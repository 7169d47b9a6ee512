// deltaserve-make-demo --out DIR [--size tiny|small|medium|llama2-7b-shape|llama3-8b-shape]
//   [--layers N] [--dtype float32|float16|bfloat16]
// Writes the embedded demo model (see demo_model.h).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "server/common/flag_names.h"
#include "server/model/llama_model.h"
#include "tools/demo_model.h"

ABSL_FLAG(std::string, out, "", "directory to write the model to (required)");
ABSL_FLAG(std::string, size, "tiny",
          "tiny, small, medium, or real layer shapes: llama2-7b-shape, llama3-8b-shape");
ABSL_FLAG(int64_t, layers, 0, "layers instead of the size's own (e.g. 2 layers of 7B shapes)");
ABSL_FLAG(std::string, dtype, "float32", "stored weight dtype: float32, float16, bfloat16");
ABSL_FLAG(int, adapters, 0, "also write this many random PEFT LoRA adapters for the model");
ABSL_FLAG(int, rank, 16, "rank of the demo adapters");
ABSL_FLAG(std::string, adapters_dir, "", "where to write the adapters (default: OUT/adapters)");
ABSL_FLAG(std::string, architecture, "LlamaForCausalLM",
          "LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Writes deltaserve's deterministic demo model.");
  std::vector<std::string> argument_storage;
  std::vector<char*> arguments = deltaserve::common::NormalizeFlagNames(argc, argv, argument_storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  deltaserve::tools::DemoModelOptions options;
  options.size = absl::GetFlag(FLAGS_size);
  options.layers = absl::GetFlag(FLAGS_layers);
  options.architecture = absl::GetFlag(FLAGS_architecture);
  std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::fprintf(stderr, "deltaserve-make-demo: --out DIR is required\n");
    return 2;
  }
  auto dtype = deltaserve::model::ParseDtype(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) {
    std::fprintf(stderr, "deltaserve-make-demo: %s\n", std::string(dtype.status().message()).c_str());
    return 2;
  }
  options.dtype = *dtype;
  absl::Status status = deltaserve::tools::WriteDemoModel(out, options);
  if (!status.ok()) {
    std::fprintf(stderr, "deltaserve-make-demo: %s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s demo model to %s\n", options.size.c_str(), out.c_str());
  const int adapters = absl::GetFlag(FLAGS_adapters);
  if (adapters > 0) {
    std::string adapters_dir = absl::GetFlag(FLAGS_adapters_dir);
    if (adapters_dir.empty()) adapters_dir = out + "/adapters";
    status = deltaserve::tools::WriteDemoAdapters(out, adapters_dir, adapters, absl::GetFlag(FLAGS_rank));
    if (!status.ok()) {
      std::fprintf(stderr, "deltaserve-make-demo: %s\n", status.ToString().c_str());
      return 1;
    }
    std::printf("wrote %d rank-%d demo adapters to %s\n", adapters, absl::GetFlag(FLAGS_rank), adapters_dir.c_str());
  }
  return 0;
}
