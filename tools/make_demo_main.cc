// deltaserve-make-demo --out DIR [--size tiny|small|medium] [--dtype float32|float16|bfloat16]
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
ABSL_FLAG(std::string, size, "tiny", "tiny, small or medium");
ABSL_FLAG(std::string, dtype, "float32", "stored weight dtype: float32, float16, bfloat16");
ABSL_FLAG(std::string, architecture, "LlamaForCausalLM",
          "LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Writes deltaserve's deterministic demo model.");
  std::vector<std::string> argument_storage;
  std::vector<char*> arguments = deltaserve::common::NormalizeFlagNames(argc, argv, argument_storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  deltaserve::tools::DemoModelOptions options;
  options.size = absl::GetFlag(FLAGS_size);
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
  return 0;
}
