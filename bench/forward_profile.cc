// deltaserve-profile-forward --model-dir DIR [--context N] [--steps N] [--adapters-dir DIR]
// Where a decode step's time goes, measured in one run on the loaded model, with one intra-op
// thread and with all of them, in alternating rounds:
//  - the memory read bandwidth and the floor weight_bytes / bandwidth,
//  - the weight products alone (the small-batch kernel on one row per weight matrix, as Forward
//    runs them),
//  - the whole forward pass of one token against a KV cache of --context tokens, and its
//    ratio to the floor; the difference between the forward pass and its products is the
//    per-operator work (norms, rotary, attention, residuals, dispatch);
//  - the same forward pass outside inference mode, where the model uses libtorch's operators
//    only (no cpu_inference_kernels).
// Then the weight products of steps of 1 to 32 rows, through GEMM, through one matrix-vector
// product per row and through the small-batch kernel. With --adapters-dir, a decode step of --rows sequences on the base, then with every row
// served by a different adapter (demo-000, demo-001, ...), and the mixed/base time ratio.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/percentile.h"
#include "server/common/flag_names.h"
#include "server/deltas/cpu_low_rank.h"
#include "server/deltas/peft_adapter.h"
#include "server/deltas/delta_backend.h"
#include "server/engine/intra_op_threads.h"
#include "server/model/cpu_linear.h"
#include "server/model/llama_model.h"

ABSL_FLAG(std::string, model_dir, "", "model directory (e.g. the medium demo model)");
ABSL_FLAG(int, context, 128, "tokens already in the KV cache");
ABSL_FLAG(int, steps, 20, "timed repetitions of each measurement in a round (the median is kept)");
ABSL_FLAG(int, rounds, 9, "rounds of the batch-1 measurements, alternating thread counts");
ABSL_FLAG(std::string, adapters_dir, "", "PEFT adapters demo-000, demo-001, ... for the mixed step");
ABSL_FLAG(int, rows, 64, "sequences in the mixed-adapter decode step");
ABSL_FLAG(std::string, weight_dtype, "auto", "storage width of the weight matrices: auto, float32, bfloat16, float16, int8");

namespace {

using Clock = std::chrono::steady_clock;
using namespace deltaserve;

template <typename F>
double MedianSeconds(int steps, F&& run) {
  std::vector<double> times;
  for (int i = 0; i < steps; ++i) {
    auto started = Clock::now();
    run();
    times.push_back(std::chrono::duration<double>(Clock::now() - started).count());
  }
  return bench::Percentile(times, 0.5);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> arguments = common::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  c10::InferenceMode inference;
  auto width = model::ParseWeightDtype(absl::GetFlag(FLAGS_weight_dtype));
  if (!width.ok()) {
    std::fprintf(stderr, "%s\n", width.status().ToString().c_str());
    return 1;
  }
  model::ModelOptions options;
  options.weight_dtype = *width;
  auto loaded = model::LlamaModel::Load(absl::GetFlag(FLAGS_model_dir), options);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  const model::LlamaModel& llama = **loaded;
  const int steps = absl::GetFlag(FLAGS_steps);
  const int64_t context = absl::GetFlag(FLAGS_context);

  std::vector<model::WeightMatrix> matrices;
  for (const model::LayerWeights& w : llama.weights().layers) {
    matrices.insert(matrices.end(), {w.q_proj, w.k_proj, w.v_proj, w.o_proj, w.gate_proj,
                                     w.up_proj, w.down_proj});
  }
  matrices.push_back(llama.weights().lm_head);
  std::vector<at::Tensor> inputs;
  for (const model::WeightMatrix& matrix : matrices) inputs.push_back(at::randn({1, matrix.columns()}));
  constexpr int64_t kBlockTokens = 16;
  const int64_t blocks_per_sequence = (context + 1 + kBlockTokens - 1) / kBlockTokens;
  std::vector<int32_t> table;
  for (int64_t b = 0; b < blocks_per_sequence; ++b) table.push_back(static_cast<int32_t>(b));
  const model::KvArena arena = llama.AllocateKvArena(blocks_per_sequence, kBlockTokens);
  arena.storage().zero_();
  model::ForwardBatch batch;
  batch.token_ids = {5};
  batch.kv_arena = &arena;
  batch.sequences = {model::SequenceSlice{context, 1, &table}};
  at::Tensor buffer = at::ones({int64_t{128} << 20});
  // The generic run's arena holds normal tensors: inference tensors take no writes outside
  // inference mode.
  model::ForwardBatch generic_batch = batch;
  model::KvArena generic_arena;
  {
    c10::InferenceMode off(false);
    generic_arena = llama.AllocateKvArena(blocks_per_sequence, kBlockTokens);
    generic_arena.storage().zero_();
  }
  generic_batch.kv_arena = &generic_arena;

  // Rounds alternate one intra-op thread and all of them; each round measures the bandwidth
  // first (this machine's drifts), so each ratio pairs neighbouring figures.
  const int all_threads = static_cast<int>(std::thread::hardware_concurrency());
  struct Figures {
    std::vector<double> products, forward, generic, ratio, bandwidth;
  };
  std::vector<Figures> by_threads(2);
  for (int round = 0; round < absl::GetFlag(FLAGS_rounds); ++round) {
    for (int config = 0; config < 2; ++config) {
      engine::SetIntraOpThreadsOfThisThread(config == 0 ? 1 : all_threads);
      Figures& figures = by_threads[config];
      const double read = MedianSeconds(3, [&] { (void)buffer.sum().item<float>(); });
      figures.bandwidth.push_back(static_cast<double>(buffer.nbytes()) / read);
      figures.products.push_back(MedianSeconds(steps, [&] {
        for (size_t i = 0; i < matrices.size(); ++i) {
          (void)model::cpu_kernels::CpuLinear(inputs[i], matrices[i], at::Tensor());
        }
      }));
      figures.forward.push_back(MedianSeconds(steps, [&] { (void)llama.Forward(batch); }));
      figures.generic.push_back(MedianSeconds(steps, [&] {
        c10::InferenceMode off(false);  // outside inference mode: libtorch operators only
        (void)llama.Forward(generic_batch);
      }));
      figures.ratio.push_back(static_cast<double>(llama.DecodeStepWeightBytes()) / figures.bandwidth.back() /
                              figures.forward.back());
    }
  }
  engine::SetIntraOpThreadsOfThisThread(all_threads);
  buffer.reset();
  std::printf("batch-1 decode step, %.1f MiB of weights, context %ld; medians of %d rounds\n",
              llama.WeightBytes() / 1048576.0, static_cast<long>(context), absl::GetFlag(FLAGS_rounds));
  std::printf("threads  bandwidth_GB/s  products_ms  forward_ms  forward-products_ms  floor/forward  "
              "generic_forward_ms\n");
  for (int config = 0; config < 2; ++config) {
    const Figures& f = by_threads[config];
    const double products = bench::Percentile(f.products, 0.5), forward = bench::Percentile(f.forward, 0.5);
    std::printf("%7d  %14.2f  %11.3f  %10.3f  %19.3f  %13.2f  %18.3f\n", config == 0 ? 1 : all_threads,
                bench::Percentile(f.bandwidth, 0.5) / 1e9, products * 1e3, forward * 1e3,
                (forward - products) * 1e3, bench::Percentile(f.ratio, 0.5),
                bench::Percentile(f.generic, 0.5) * 1e3);
  }

  // Weight products of a few rows: GEMM (at::linear), one matrix-vector product per row (both
  // over float32 copies of the weights), and the small-batch kernel at the weights' own width
  // (where LlamaModel's Linear switches between them).
  std::printf("\nweight products of a step of R rows, ms (all threads)\n");
  std::printf("rows   gemm  mv_per_row  small_batch\n");
  std::vector<at::Tensor> dense;
  for (const model::WeightMatrix& matrix : matrices) dense.push_back(matrix.Dense(at::kFloat));
  for (int64_t rows : {1, 2, 3, 4, 6, 8, 12, 16, 24, 32}) {
    std::vector<at::Tensor> batches;
    for (const model::WeightMatrix& matrix : matrices) batches.push_back(at::randn({rows, matrix.columns()}));
    const double gemm = MedianSeconds(steps, [&] {
      for (size_t i = 0; i < matrices.size(); ++i) (void)at::linear(batches[i], dense[i]);
    });
    const double per_row = MedianSeconds(steps, [&] {
      for (size_t i = 0; i < matrices.size(); ++i) {
        for (int64_t row = 0; row < rows; ++row) (void)at::mv(dense[i], batches[i][row]);
      }
    });
    const double small_batch = MedianSeconds(steps, [&] {
      for (size_t i = 0; i < matrices.size(); ++i) (void)model::cpu_kernels::CpuLinear(batches[i], matrices[i], at::Tensor());
    });
    std::printf("%4ld  %5.2f  %10.2f  %11.2f\n", static_cast<long>(rows), gemm * 1e3, per_row * 1e3,
                small_batch * 1e3);
  }

  const std::string adapters_dir = absl::GetFlag(FLAGS_adapters_dir);
  if (adapters_dir.empty()) return 0;
  const int rows = absl::GetFlag(FLAGS_rows);
  std::vector<deltas::PeftAdapter> adapters;
  std::vector<std::vector<int32_t>> tables;
  model::ForwardBatch step;
  std::vector<deltas::DeltaSegment> segments;
  for (int row = 0; row < rows; ++row) {
    char name[32];
    std::snprintf(name, sizeof(name), "/demo-%03d", row);
    auto adapter = deltas::ReadPeftAdapter(adapters_dir + name, llama.config(), at::kFloat, at::kCPU);
    if (!adapter.ok()) {
      std::fprintf(stderr, "%s\n", adapter.status().ToString().c_str());
      return 1;
    }
    adapter->deltas = deltas::ServingLayout(adapter->deltas);  // as the engine's adapter cache keeps them
    adapters.push_back(std::move(*adapter));
    tables.emplace_back();
    for (int64_t b = 0; b < blocks_per_sequence; ++b) {
      tables.back().push_back(static_cast<int32_t>(row * blocks_per_sequence + b));
    }
    step.token_ids.push_back(5 + row);
  }
  const model::KvArena step_arena = llama.AllocateKvArena(rows * blocks_per_sequence, kBlockTokens);
  step_arena.storage().zero_();
  step.kv_arena = &step_arena;
  for (int row = 0; row < rows; ++row) {
    step.sequences.push_back(model::SequenceSlice{context, 1, &tables[row]});
    segments.push_back({row, 1, &adapters[row].deltas});
  }
  const int mixed_steps = std::max(3, steps / 2);
  const double base_step = MedianSeconds(mixed_steps, [&] { (void)llama.Forward(step); });
  const std::unique_ptr<model::ProjectionDeltaHook> hook = deltas::MakeDeltaBackend(at::kCPU)->ForStep(segments);
  step.deltas = hook.get();
  const double mixed_step = MedianSeconds(mixed_steps, [&] { (void)llama.Forward(step); });
  // The low-rank products alone: every module's hook call on inputs of the step's shape.
  const model::ModelConfig& config = llama.config();
  const int64_t q_width = config.num_attention_heads * config.head_dim;
  const int64_t kv_width = config.num_key_value_heads * config.head_dim;
  const std::vector<std::pair<model::Projection, std::pair<int64_t, int64_t>>> modules = {
      {model::Projection::kQuery, {config.hidden_size, q_width}},
      {model::Projection::kKey, {config.hidden_size, kv_width}},
      {model::Projection::kValue, {config.hidden_size, kv_width}},
      {model::Projection::kOutput, {q_width, config.hidden_size}},
      {model::Projection::kGate, {config.hidden_size, config.intermediate_size}},
      {model::Projection::kUp, {config.hidden_size, config.intermediate_size}},
      {model::Projection::kDown, {config.intermediate_size, config.hidden_size}}};
  std::vector<at::Tensor> module_inputs, module_outputs;
  for (const auto& [projection, shape] : modules) {
    module_inputs.push_back(at::randn({rows, shape.first}));
    module_outputs.push_back(at::zeros({rows, shape.second}));
  }
  const double low_rank = MedianSeconds(mixed_steps, [&] {
    for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
      for (size_t m = 0; m < modules.size(); ++m) hook->AddDelta(layer, modules[m].first, module_inputs[m], module_outputs[m]);
    }
  });
  std::printf("low-rank products alone: %.2f ms; adapter bytes read per step %.1f MiB\n", low_rank * 1e3,
              rows * adapters[0].deltas.Bytes() / 1048576.0);
  std::printf("decode step of %d sequences: base %.2f ms, each with its own adapter %.2f ms, base/mixed %.2f\n",
              rows, base_step * 1e3, mixed_step * 1e3, base_step / mixed_step);
  return 0;
}
