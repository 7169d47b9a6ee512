// deltaserve-bench-engine --model-dir DIR [--device cpu|cuda] [--dtype float32|bfloat16|float16]
//   [--decode-tokens N] [--adapters-dir DIR]
// Engine-level benchmark (libtorch only, no gRPC): measures, in one run,
//  - the machine's memory read bandwidth (summing a large tensor, best of several passes),
//  - batch-1 decode seconds per token, and the floor weight_bytes / bandwidth, as a ratio,
//  - decode throughput with 1, 4, 16 and 64 concurrent requests, as ratios to 1,
//  - with --adapters-dir, throughput over K distinct adapters through the tiered adapter
//    cache (device budget smaller than the larger K), as ratios to base-only and to serving
//    one adapter at a time.
// Prints ratios because this machine's absolute timings drift.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <random>
#include <cstdio>
#include <memory>
#include <string>
#include <optional>
#include <vector>

#include <sys/resource.h>

#include <ATen/ATen.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "bench/percentile.h"
#include "server/common/flag_names.h"
#include "server/common/memory_reuse.h"
#include "server/deltas/peft_adapter.h"
#include "server/engine/engine.h"
#include "server/engine/intra_op_threads.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer_loader.h"

ABSL_FLAG(std::string, model_dir, "", "model directory (e.g. the medium demo model)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(std::string, dtype, "float32", "compute dtype: float32, bfloat16 or float16");
ABSL_FLAG(std::string, weight_dtype, "auto", "storage width of the weight matrices: auto, float32, bfloat16, float16, int8");
ABSL_FLAG(int, decode_tokens, 128, "tokens generated per request");
ABSL_FLAG(int, decode_rounds, 7, "batch-1 decode rounds, each after its own bandwidth measurement");
ABSL_FLAG(std::string, concurrency, "1,4,16,64", "concurrent request counts to compare");
ABSL_FLAG(std::string, adapters_dir, "", "PEFT adapters (demo-000, demo-001, ...) for the mixed-adapter run");
ABSL_FLAG(std::string, adapter_counts, "1,8,32,128,512", "numbers of distinct adapters K to spread requests over");
ABSL_FLAG(int, adapter_requests, 128, "requests per mixed-adapter run, all submitted at once");
ABSL_FLAG(int, adapter_tokens, 32, "tokens generated per request in the mixed-adapter runs");
ABSL_FLAG(int64_t, device_cache_adapters, 64, "device adapter cache budget, in adapters");
ABSL_FLAG(int64_t, host_cache_adapters, 128, "host adapter cache budget, in adapters");

namespace {

long MinorPageFaults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

using Clock = std::chrono::steady_clock;
using namespace deltaserve;

double Seconds(Clock::duration duration) { return std::chrono::duration<double>(duration).count(); }

double ReadBandwidthBytesPerSecond(const at::Device& device) {
  at::Tensor buffer = at::ones({int64_t{128} << 20}, at::TensorOptions().dtype(at::kFloat).device(device));
  double best = 1e30;
  for (int pass = 0; pass < 6; ++pass) {
    auto started = Clock::now();
    float sum = buffer.sum().item<float>();
    best = std::min(best, Seconds(Clock::now() - started));
    if (sum < 0) std::printf("impossible\n");
  }
  return static_cast<double>(buffer.nbytes()) / best;
}

class CountingSink : public engine::RequestSink {
 public:
  void OnOutput(engine::GenerationOutput output) override {
    if (tokens_ == 0) first_token_ = Clock::now();
    tokens_ += static_cast<int64_t>(output.token_ids.size());
    Keep(output.token_ids);
  }
  void OnFinished(engine::RequestResult result) override {
    tokens_ += static_cast<int64_t>(result.final_output.token_ids.size());
    Keep(result.final_output.token_ids);
    finished_ = Clock::now();
    done_.Notify();
  }
  void Wait() { done_.WaitForNotification(); }
  int64_t tokens_ = 0;
  Clock::time_point first_token_, finished_;
  std::vector<int32_t> first_ids_;  // the first 16 generated

 private:
  void Keep(const std::vector<int32_t>& ids) {
    for (int32_t id : ids) {
      if (first_ids_.size() < 16) first_ids_.push_back(id);
    }
  }
  absl::Notification done_;
};

engine::EngineRequest Request(const model::Tokenizer& tokenizer, int index, int tokens,
                              uint64_t adapter_id = 0) {
  engine::EngineRequest request;
  request.prompt_token_ids =
      *tokenizer.EncodePrompt("the engineer measures the last train near the harbour " + std::to_string(index));
  request.sampling.max_tokens = tokens;
  request.sampling.ignore_eos = true;
  request.adapter_id = adapter_id;
  return request;
}

// Adapter ids in the engine's cache, one per request (0: the base model).
using Variants = std::vector<uint64_t>;

// Runs one request per entry of `variants` all at once, or, when
// one_adapter_at_a_time, one variant's requests at a time, the way a server that cannot mix
// adapters in a batch would. Returns generated tokens per second over the whole run.
double Throughput(engine::Engine& engine, const Variants& variants,
                         int tokens, bool one_adapter_at_a_time) {
  std::vector<std::vector<int>> groups;
  if (one_adapter_at_a_time) {
    std::map<uint64_t, std::vector<int>> by_variant;
    for (size_t i = 0; i < variants.size(); ++i) by_variant[variants[i]].push_back(static_cast<int>(i));
    for (auto& [variant, indices] : by_variant) groups.push_back(indices);
  } else {
    groups.emplace_back();
    for (size_t i = 0; i < variants.size(); ++i) groups.back().push_back(static_cast<int>(i));
  }
  int64_t total = 0;
  auto started = Clock::now();
  for (const std::vector<int>& group : groups) {
    std::vector<std::shared_ptr<CountingSink>> sinks;
    for (int i : group) {
      sinks.push_back(std::make_shared<CountingSink>());
      if (!engine.Submit(Request(engine.tokenizer(), i, tokens, variants[i]), sinks.back()).ok()) return 0;
    }
    for (auto& sink : sinks) {
      sink->Wait();
      total += sink->tokens_;
    }
  }
  return static_cast<double>(total) / Seconds(Clock::now() - started);
}

// Adds up the engine's step time (forward pass and sampling) between Reset calls.
class StepTimer : public engine::EngineObserver {
 public:
  void OnStep(const engine::StepStats& stats) override { seconds = seconds + stats.step_seconds; }
  std::atomic<double> seconds{0};
};

// Counts the adapter cache's loads and evictions.
class CacheCounter : public engine::EngineObserver {
 public:
  void OnAdapterLoad(engine::AdapterTier from, double seconds) override { ++loads; }
  void OnAdapterEviction(engine::AdapterTier from) override { ++evictions; }
  std::atomic<int64_t> loads{0}, evictions{0};
};

std::string AdapterPath(const std::string& adapters_dir, int index) {
  char name[32];
  std::snprintf(name, sizeof(name), "/demo-%03d", index);
  return adapters_dir + name;
}

// Mixed-adapter serving through the tiered adapter cache, the way the server registers
// adapters: for each K, --adapter-requests requests spread uniformly over K distinct adapters,
// all submitted at once, against base-only and against one adapter at a time.
int RunAdapterBenchmark(std::shared_ptr<const model::LlamaModel> llama, const std::string& adapters_dir) {
  std::vector<int> counts;
  for (absl::string_view item : absl::StrSplit(absl::GetFlag(FLAGS_adapter_counts), ',')) {
    counts.push_back(std::stoi(std::string(item)));
  }
  const int most = *std::max_element(counts.begin(), counts.end());
  auto first = deltas::ReadPeftAdapter(AdapterPath(adapters_dir, 0), llama->config(), llama->dtype(), at::kCPU);
  if (!first.ok()) {
    std::fprintf(stderr, "%s\n", first.status().ToString().c_str());
    return 1;
  }
  const int64_t adapter_bytes = first->deltas.Bytes();
  engine::EngineOptions options;
  options.max_running_requests = 64;
  options.max_queued_requests = 4096;
  options.adapter_cache_bytes = absl::GetFlag(FLAGS_device_cache_adapters) * adapter_bytes;
  options.adapter_host_cache_bytes = absl::GetFlag(FLAGS_host_cache_adapters) * adapter_bytes;
  CacheCounter counter;
  auto tokenizer = model::LoadTokenizer(absl::GetFlag(FLAGS_model_dir), llama->config());
  if (!tokenizer.ok()) return 1;
  auto created = engine::Engine::Create(options, llama, std::move(*tokenizer), &counter);
  if (!created.ok()) {
    std::fprintf(stderr, "%s\n", created.status().ToString().c_str());
    return 1;
  }
  engine::Engine& engine = **created;
  std::vector<uint64_t> ids;
  for (int i = 0; i < most; ++i) {
    auto adapter = deltas::ReadPeftAdapter(AdapterPath(adapters_dir, i), llama->config(), llama->dtype(), at::kCPU);
    if (!adapter.ok()) {
      std::fprintf(stderr, "%s (write more with deltaserve-make-demo --adapters N)\n",
                   adapter.status().ToString().c_str());
      return 1;
    }
    auto id = engine.adapters().Add(AdapterPath(adapters_dir, i),
                                    std::make_shared<const deltas::DeltaSet>(std::move(adapter->deltas)));
    if (!id.ok()) return 1;
    ids.push_back(*id);
  }
  const int requests = absl::GetFlag(FLAGS_adapter_requests);
  const int tokens = absl::GetFlag(FLAGS_adapter_tokens);
  Throughput(engine, Variants(requests), tokens, false);  // warm-up: first allocations
  std::printf("\nmixed adapters: %d requests of %d tokens, 64 running at most; adapters of %.1f MiB "
              "(rank %ld); device cache %ld adapters, host cache %ld, the rest on disk\n",
              requests, tokens, adapter_bytes / 1048576.0, static_cast<long>(first->deltas.MaxRank()),
              static_cast<long>(absl::GetFlag(FLAGS_device_cache_adapters)),
              static_cast<long>(absl::GetFlag(FLAGS_host_cache_adapters)));
  // This machine drifts by several percent between runs: base-only is measured again right
  // before each K, and each ratio uses the base-only figure of its own K.
  std::printf("      K  base_tok/s  mixed_tok/s  mixed/base  one_at_a_time/base  mixed/one_at_a_time  loads  evictions\n");
  std::mt19937_64 random(7);
  for (int count : counts) {
    Variants variants;
    for (int i = 0; i < requests; ++i) variants.push_back(ids[random() % count]);
    const double base_only = Throughput(engine, Variants(requests), tokens, false);
    const int64_t loads = counter.loads, evictions = counter.evictions;
    const double mixed = Throughput(engine, variants, tokens, false);
    const int64_t mixed_loads = counter.loads - loads, mixed_evictions = counter.evictions - evictions;
    const double one_at_a_time = Throughput(engine, variants, tokens, true);
    std::printf("%7d  %10.1f  %11.1f  %10.2f  %18.2f  %19.2f  %5ld  %9ld\n", count, base_only, mixed,
                mixed / base_only,
                one_at_a_time / base_only, mixed / one_at_a_time, static_cast<long>(mixed_loads),
                static_cast<long>(mixed_evictions));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  common::ReuseFreedMemory();  // as the server does
  std::vector<std::string> storage;
  std::vector<char*> arguments = common::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  auto device = model::ParseDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "%s\n", device.status().ToString().c_str());
    return 1;
  }
  auto dtype = model::ParseDtype(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) {
    std::fprintf(stderr, "%s\n", dtype.status().ToString().c_str());
    return 1;
  }
  auto width = model::ParseWeightDtype(absl::GetFlag(FLAGS_weight_dtype));
  if (!width.ok()) {
    std::fprintf(stderr, "%s\n", width.status().ToString().c_str());
    return 1;
  }
  model::ModelOptions model_options;
  model_options.dtype = *dtype;
  model_options.device = *device;
  model_options.weight_dtype = *width;
  auto loaded = model::LlamaModel::Load(absl::GetFlag(FLAGS_model_dir), model_options);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<const model::LlamaModel> llama = std::move(*loaded);
  auto tokenizer = model::LoadTokenizer(absl::GetFlag(FLAGS_model_dir), llama->config());
  if (!tokenizer.ok()) return 1;
  engine::EngineOptions options;
  options.max_running_requests = 64;
  StepTimer step_timer;
  auto engine = engine::Engine::Create(options, llama, std::move(*tokenizer), &step_timer);
  if (!engine.ok()) return 1;
  const int tokens = absl::GetFlag(FLAGS_decode_tokens);
  // The bandwidth is read with as many threads as the engine's steps use (one per core).
  engine::SetIntraOpThreadsOfThisThread(options.threads);

  Throughput(**engine, Variants(1), 16, false);  // warm-up
  // Batch-1 decode (time between the first and the last token of one request) against the
  // bandwidth floor, in rounds that each measure the bandwidth right before decoding: this
  // machine's bandwidth drifts by half within minutes, so each ratio pairs neighbouring figures.
  std::vector<double> per_token, floor, ratio, in_steps;
  std::vector<int32_t> greedy_ids;
  for (int round = 0; round < absl::GetFlag(FLAGS_decode_rounds); ++round) {
    const double bandwidth = ReadBandwidthBytesPerSecond(*device);
    auto sink = std::make_shared<CountingSink>();
    step_timer.seconds = 0;
    if (!(*engine)->Submit(Request((*engine)->tokenizer(), 0, tokens), sink).ok()) return 1;
    sink->Wait();
    per_token.push_back(Seconds(sink->finished_ - sink->first_token_) / (sink->tokens_ - 1));
    in_steps.push_back(step_timer.seconds / sink->tokens_);
    greedy_ids = sink->first_ids_;
    floor.push_back(static_cast<double>(llama->DecodeStepWeightBytes()) / bandwidth);
    ratio.push_back(floor.back() / per_token.back());
  }
  const std::optional<at::ScalarType> stored = llama->weight_width();
  std::printf("model: %s, %.1f MiB of weights stored as %s (%.1f MiB read per decode step), computing in %s\n",
              absl::GetFlag(FLAGS_model_dir).c_str(), llama->WeightBytes() / 1048576.0,
              stored.has_value() ? model::WidthName(*stored).c_str() : "mixed widths",
              llama->DecodeStepWeightBytes() / 1048576.0, absl::GetFlag(FLAGS_dtype).c_str());
  std::printf("batch-1 decode, median of %zu rounds: %.3f ms/token; bandwidth floor %.3f ms/token "
              "(%.2f GB/s); floor/measured = %.2f (rounds %.2f to %.2f)\n",
              ratio.size(), bench::Percentile(per_token, 0.5) * 1e3, bench::Percentile(floor, 0.5) * 1e3,
              llama->DecodeStepWeightBytes() / bench::Percentile(floor, 0.5) / 1e9, bench::Percentile(ratio, 0.5),
              *std::min_element(ratio.begin(), ratio.end()), *std::max_element(ratio.begin(), ratio.end()));
  std::printf("  of which in engine steps (forward pass and sampling): %.3f ms/token\n",
              bench::Percentile(in_steps, 0.5) * 1e3);
  // The request's prompt and first greedy tokens, for comparisons with other engines.
  std::printf("prompt_token_ids %s\ngreedy_token_ids %s\n",
              absl::StrJoin(Request((*engine)->tokenizer(), 0, tokens).prompt_token_ids, ",").c_str(),
              absl::StrJoin(greedy_ids, ",").c_str());

  double base = 0;
  // Page faults taken while serving (the process's minor faults across the run): memory the
  // steps map fresh instead of reusing.
  std::printf("concurrency  tokens/s  ratio_to_1  page_faults\n");
  for (absl::string_view item : absl::StrSplit(absl::GetFlag(FLAGS_concurrency), ',')) {
    const int count = std::stoi(std::string(item));
    const long faults_before = MinorPageFaults();
    double throughput = Throughput(**engine, Variants(count), tokens, false);
    const long faults = MinorPageFaults() - faults_before;
    if (base == 0) base = throughput;
    std::printf("%11d  %8.1f  %10.2f  %11ld\n", count, throughput, throughput / base, faults);
  }

  const std::string adapters_dir = absl::GetFlag(FLAGS_adapters_dir);
  if (adapters_dir.empty()) return 0;
  return RunAdapterBenchmark(llama, adapters_dir);
}
