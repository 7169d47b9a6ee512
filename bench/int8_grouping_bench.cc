// deltaserve-bench-int8-grouping --model_dir DIR [--tokens 64]
// How much int8 weight quantization moves a model's log-probabilities with one scale per output
// channel (what --weight-dtype int8 stores) against one scale per group of 128, 64 or 32 inputs
// (llama.cpp's Q8_0 uses 32). Each scheme's matrices are quantized and dequantized back into a
// float32 model, so the figures isolate the rounding, not the kernels. The float32 model's greedy
// continuation of a fixed prompt is scored teacher-forced: mean and max |dlogprob| of the chosen
// tokens, and how often the top token agrees. Bytes per weight include the float32 scales, so the
// batch-1 decode cost of a scheme is at least that ratio over per-channel (decode streams weights).
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "server/model/llama_model.h"

ABSL_FLAG(std::string, model_dir, "", "model directory (e.g. a demo model of real layer shapes)");
ABSL_FLAG(int64_t, tokens, 64, "greedy tokens scored after a 24-token prompt");

namespace {

using namespace deltaserve::model;

// Quantized and dequantized with one symmetric scale per `group` inputs of each row (0: per row).
at::Tensor RoundTrip(const at::Tensor& dense, int64_t group) {
  if (group == 0) return QuantizeInt8(dense).Dense(at::kFloat);
  const at::Tensor blocks = dense.to(at::kFloat).reshape({dense.size(0), dense.size(1) / group, group});
  const at::Tensor largest = blocks.abs().amax(2, true);
  const at::Tensor scales = at::where(largest > 0, largest / 127.0, at::ones_like(largest));
  return (at::round(blocks / scales).clamp(-127, 127) * scales).reshape(dense.sizes());
}

std::unique_ptr<LlamaModel> Quantized(const LlamaModel& full, int64_t group) {
  LlamaWeights weights = full.weights();
  ForEachWeightMatrix(weights, [group](WeightMatrix& matrix) {
    matrix = WeightMatrix{RoundTrip(matrix.values, group), at::Tensor()};
  });
  return std::make_unique<LlamaModel>(full.config(), weights, ModelOptions{});
}

// Log-probabilities at every position of `tokens`, in one prefill.
at::Tensor LogProbabilities(const LlamaModel& model, const std::vector<int64_t>& tokens) {
  ForwardBatch batch;
  batch.token_ids = tokens;
  batch.sequences.push_back({0, static_cast<int64_t>(tokens.size()), nullptr});
  return at::log_softmax(model.Forward(batch), -1);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  c10::InferenceMode inference;
  ModelOptions options;
  options.weight_dtype = at::kFloat;
  auto loaded = LlamaModel::Load(absl::GetFlag(FLAGS_model_dir), options);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  const LlamaModel& full = **loaded;
  const int64_t vocab = full.config().vocab_size, count = absl::GetFlag(FLAGS_tokens);
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < 24; ++i) tokens.push_back(3 + (i * 131 + 51) % (vocab - 3));
  const int64_t prompt = static_cast<int64_t>(tokens.size());
  // The float32 model's greedy continuation (recomputed in full each step: short and simple).
  for (int64_t i = 0; i < count; ++i) tokens.push_back(LogProbabilities(full, tokens)[-1].argmax().item<int64_t>());
  const std::vector<int64_t> inputs(tokens.begin(), tokens.end() - 1);
  const at::Tensor chosen = at::tensor(std::vector<int64_t>(tokens.begin() + prompt, tokens.end())).unsqueeze(1);
  const at::Tensor expected = LogProbabilities(full, inputs).narrow(0, prompt - 1, count);
  std::printf("int8 rounding against float32, %ld greedy tokens teacher-forced\n", static_cast<long>(count));
  std::printf("scales             bytes/weight  mean|dlogprob|  max|dlogprob|  top-1 agreement\n");
  const int64_t hidden = full.config().hidden_size, intermediate = full.config().intermediate_size;
  for (int64_t group : {0, 128, 64, 32}) {
    if (group != 0 && (hidden % group != 0 || intermediate % group != 0)) continue;
    const at::Tensor actual = LogProbabilities(*Quantized(full, group), inputs).narrow(0, prompt - 1, count);
    const at::Tensor delta = (actual.gather(1, chosen) - expected.gather(1, chosen)).abs();
    const double agreement = actual.argmax(-1).eq(expected.argmax(-1)).to(at::kDouble).mean().item<double>();
    const std::string name = group == 0 ? "per channel" : "per " + std::to_string(group) + " inputs";
    const double bytes = 1.0 + 4.0 / static_cast<double>(group == 0 ? hidden : group);
    std::printf("%-18s %12.3f  %14.5f  %13.5f  %15.3f\n", name.c_str(), bytes, delta.mean().item<double>(),
                delta.max().item<double>(), agreement);
  }
  return 0;
}
