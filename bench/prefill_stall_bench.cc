// deltaserve-bench-prefill-stall --model-dir DIR [--streams 16] [--prompt-tokens 2001]
//   [--targets-ms 0,200,100]
// What one long prompt does to running streams: for each inter-token latency target (0 = no
// pacing: prompt chunks up to --max-batch-tokens), an engine runs `streams` greedy decodes, and
// once they are all decoding one prompt of `prompt-tokens` tokens arrives. Printed side by side,
// per target: the running streams' inter-token latency (p50, p99, max) while the long prompt is
// prefilled, its time to first token, and the ratios to the unpaced run. Ratios, since this
// machine's absolute timings drift.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "bench/percentile.h"
#include "server/common/flag_names.h"
#include "server/engine/engine.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer_loader.h"

ABSL_FLAG(std::string, model_dir, "", "model directory (e.g. the medium demo model)");
ABSL_FLAG(int, streams, 16, "running streams");
ABSL_FLAG(int, prompt_tokens, 2001, "tokens of the long prompt");
ABSL_FLAG(std::string, targets_ms, "0,200,100", "inter-token latency targets to compare (0 = off)");
ABSL_FLAG(int64_t, max_batch_tokens, 2048, "the engine's --max-batch-tokens");

namespace {

using Clock = std::chrono::steady_clock;
using namespace deltaserve;

double Ms(Clock::duration duration) { return std::chrono::duration<double, std::milli>(duration).count(); }

// Keeps the arrival time of every output of one request.
class TimingSink : public engine::RequestSink {
 public:
  void OnOutput(engine::GenerationOutput output) override {
    if (output.token_ids.empty()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    times_.push_back(Clock::now());
  }
  void OnFinished(engine::RequestResult) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      times_.push_back(Clock::now());
    }
    done_.Notify();
  }
  std::vector<Clock::time_point> Times() {
    std::lock_guard<std::mutex> lock(mutex_);
    return times_;
  }
  void Wait() { done_.WaitForNotification(); }

 private:
  std::mutex mutex_;
  std::vector<Clock::time_point> times_;
  absl::Notification done_;
};

struct Result {
  double p50 = 0, p99 = 0, max = 0, ttft = 0;
};

Result Run(std::shared_ptr<const model::LlamaModel> llama, double target_ms) {
  auto tokenizer = model::LoadTokenizer(absl::GetFlag(FLAGS_model_dir), llama->config());
  engine::EngineOptions options;
  options.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  options.itl_target = absl::Milliseconds(target_ms);
  auto engine = engine::Engine::Create(options, llama, std::move(*tokenizer), nullptr);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    std::exit(1);
  }
  const int streams = absl::GetFlag(FLAGS_streams);
  std::vector<std::shared_ptr<TimingSink>> sinks;
  for (int i = 0; i < streams; ++i) {
    engine::EngineRequest request;
    request.prompt_token_ids = *(*engine)->tokenizer().EncodePrompt("the harbour train number " + std::to_string(i));
    request.sampling.max_tokens = 4000;
    request.sampling.ignore_eos = true;
    sinks.push_back(std::make_shared<TimingSink>());
    if (!(*engine)->Submit(request, sinks.back()).ok()) std::exit(1);
  }
  // Every stream decoding, for a while.
  for (auto& sink : sinks) {
    while (sink->Times().size() < 20) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  engine::EngineRequest long_prompt;
  const int32_t vocab = static_cast<int32_t>(llama->config().vocab_size);
  for (int i = 0; i < absl::GetFlag(FLAGS_prompt_tokens); ++i) long_prompt.prompt_token_ids.push_back(3 + (i * 7919) % (vocab - 3));
  long_prompt.sampling.max_tokens = 1;
  auto long_sink = std::make_shared<TimingSink>();
  const Clock::time_point arrived = Clock::now();
  if (!(*engine)->Submit(long_prompt, long_sink).ok()) std::exit(1);
  long_sink->Wait();
  const Clock::time_point first = long_sink->Times().front();
  std::vector<double> gaps;
  for (auto& sink : sinks) {
    std::vector<Clock::time_point> times = sink->Times();
    for (size_t i = 1; i < times.size(); ++i) {
      // Gaps that overlap the prefill window.
      if (times[i] > arrived && times[i - 1] < first) gaps.push_back(Ms(times[i] - times[i - 1]));
    }
  }
  (*engine)->Stop();
  Result result;
  result.p50 = bench::Percentile(gaps, 0.5);
  result.p99 = bench::Percentile(gaps, 0.99);
  result.max = gaps.empty() ? 0 : *std::max_element(gaps.begin(), gaps.end());
  result.ttft = Ms(first - arrived);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> arguments = common::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  auto loaded = model::LlamaModel::Load(absl::GetFlag(FLAGS_model_dir), model::ModelOptions());
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<const model::LlamaModel> llama = std::move(*loaded);
  std::vector<double> targets;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_targets_ms), ',')) {
    double value = 0;
    if (absl::SimpleAtod(part, &value)) targets.push_back(value);
  }
  std::printf("%d streams decoding; one %d-token prompt arrives; --max-batch-tokens %ld\n", absl::GetFlag(FLAGS_streams),
              absl::GetFlag(FLAGS_prompt_tokens), static_cast<long>(absl::GetFlag(FLAGS_max_batch_tokens)));
  std::printf("%-12s %10s %10s %10s %12s %14s %14s\n", "itl target", "ITL p50", "ITL p99", "ITL max", "long TTFT",
              "p99 / unpaced", "TTFT / unpaced");
  Run(llama, 0);  // warm-up
  Result unpaced;
  for (double target : targets) {
    Result result = Run(llama, target);
    if (target == 0) unpaced = result;
    std::printf("%-12s %8.0f ms %8.0f ms %8.0f ms %10.0f ms %14.2f %14.2f\n",
                target == 0 ? "off" : (std::to_string(static_cast<int>(target)) + " ms").c_str(), result.p50,
                result.p99, result.max, result.ttft, unpaced.p99 > 0 ? result.p99 / unpaced.p99 : 0,
                unpaced.ttft > 0 ? result.ttft / unpaced.ttft : 0);
  }
  return 0;
}
