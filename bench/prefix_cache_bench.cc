// deltaserve-bench-prefix-cache --model-dir DIR [--mode chat|batch|both]
// The prefix cache and global prefix sharing on the engine, side by side in one run.
//  - chat: one system prompt of --system-tokens tokens shared by --requests requests with
//    --user-tokens-token user turns, spread over the base and --adapters adapters, sent by
//    --concurrency closed-loop clients. Time to first token (p50, p90) and generated tokens/s
//    with the prefix cache on and off, and on ÷ off.
//  - batch (BatchLLM-style offline batch): --batch-requests requests over --prefixes shared
//    prefixes of --min-prefix to --max-prefix tokens, in random order, all submitted at once.
//    Tokens/s and prompt tokens computed with global prefix sharing (the cache on) and without it
//    (FIFO admission, the cache on), and their ratio; run once per --kv-cache-bytes in
//    --batch-kv-bytes (a cache that holds every prefix, and one that does not).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "bench/percentile.h"
#include "server/common/file_util.h"
#include "server/common/flag_names.h"
#include "server/engine/engine.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer_loader.h"
#include "tools/demo_model.h"

ABSL_FLAG(std::string, model_dir, "", "model directory (e.g. the medium demo model)");
ABSL_FLAG(std::string, mode, "both", "chat, batch or both");
ABSL_FLAG(int, system_tokens, 1024, "chat: tokens of the shared system prompt");
ABSL_FLAG(int, user_tokens, 32, "chat: tokens of each user turn");
ABSL_FLAG(int, requests, 64, "chat: requests");
ABSL_FLAG(int, adapters, 8, "chat: adapters the requests use besides the base");
ABSL_FLAG(int, concurrency, 8, "chat: closed-loop clients");
ABSL_FLAG(int, max_tokens, 16, "tokens generated per request");
ABSL_FLAG(int, batch_requests, 512, "batch: requests");
ABSL_FLAG(int, prefixes, 16, "batch: distinct shared prefixes");
ABSL_FLAG(int, min_prefix, 512, "batch: shortest prefix");
ABSL_FLAG(int, max_prefix, 2048, "batch: longest prefix");
ABSL_FLAG(int, suffix_tokens, 32, "batch: tokens after the prefix");
ABSL_FLAG(std::string, batch_kv_bytes, "1073741824,268435456", "batch: --kv-cache-bytes values to run");

namespace {

using Clock = std::chrono::steady_clock;
using namespace deltaserve;

double Seconds(Clock::duration duration) { return std::chrono::duration<double>(duration).count(); }

class Sink : public engine::RequestSink {
 public:
  explicit Sink(Clock::time_point submitted) : submitted_(submitted) {}
  void OnOutput(engine::GenerationOutput output) override { Note(output); }
  void OnFinished(engine::RequestResult result) override {
    Note(result.final_output);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      usage_ = result.usage;
      if (!result.status.ok()) std::fprintf(stderr, "request failed: %s\n", result.status.ToString().c_str());
    }
    done_.Notify();
  }
  void Wait() { done_.WaitForNotification(); }
  double ttft() const { return Seconds(first_ - submitted_); }
  int64_t tokens() const { return tokens_; }
  engine::Usage usage() const { return usage_; }

 private:
  void Note(const engine::GenerationOutput& output) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (tokens_ == 0 && !output.token_ids.empty()) first_ = Clock::now();
    tokens_ += static_cast<int64_t>(output.token_ids.size());
  }
  Clock::time_point submitted_, first_;
  std::mutex mutex_;
  int64_t tokens_ = 0;
  engine::Usage usage_;
  absl::Notification done_;
};

std::unique_ptr<engine::Engine> MakeEngine(std::shared_ptr<const model::LlamaModel> llama, bool cache, bool grouping,
                                           int64_t kv_bytes) {
  auto tokenizer = model::LoadTokenizer(absl::GetFlag(FLAGS_model_dir), llama->config());
  engine::EngineOptions options;
  options.prefix_caching = cache;
  options.prefix_grouping = grouping;
  options.kv_cache_bytes = kv_bytes;
  options.itl_target = absl::ZeroDuration();  // whole prompts per step: the prefill cost is what differs
  auto engine = engine::Engine::Create(options, llama, std::move(*tokenizer), nullptr);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*engine);
}

std::vector<int32_t> RandomTokens(std::mt19937& random, int count, int32_t vocab) {
  std::uniform_int_distribution<int32_t> token(3, vocab - 1);
  std::vector<int32_t> tokens(static_cast<size_t>(count));
  for (int32_t& id : tokens) id = token(random);
  return tokens;
}

engine::EngineRequest MakeRequest(std::vector<int32_t> prompt, uint64_t adapter) {
  engine::EngineRequest request;
  request.prompt_token_ids = std::move(prompt);
  request.adapter_id = adapter;
  request.sampling.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  request.sampling.ignore_eos = true;
  return request;
}

struct ChatResult {
  double ttft_p50 = 0, ttft_p90 = 0, tokens_per_second = 0, cached_fraction = 0;
};

ChatResult RunChat(std::shared_ptr<const model::LlamaModel> llama, const std::string& adapters_dir, bool cache) {
  auto engine = MakeEngine(llama, cache, true, int64_t{1} << 30);
  std::vector<uint64_t> variants = {0};
  for (int i = 0; i < absl::GetFlag(FLAGS_adapters); ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "/demo-%03d", i);
    auto id = engine->adapters().Add(adapters_dir + name, nullptr);
    if (!id.ok()) {
      std::fprintf(stderr, "%s\n", id.status().ToString().c_str());
      std::exit(1);
    }
    variants.push_back(*id);
  }
  const int32_t vocab = static_cast<int32_t>(llama->config().vocab_size);
  std::mt19937 random(7);
  const std::vector<int32_t> system = RandomTokens(random, absl::GetFlag(FLAGS_system_tokens), vocab);
  std::vector<engine::EngineRequest> requests;
  for (int i = 0; i < absl::GetFlag(FLAGS_requests); ++i) {
    std::vector<int32_t> prompt = system;
    const std::vector<int32_t> user = RandomTokens(random, absl::GetFlag(FLAGS_user_tokens), vocab);
    prompt.insert(prompt.end(), user.begin(), user.end());
    requests.push_back(MakeRequest(std::move(prompt), variants[static_cast<size_t>(i) % variants.size()]));
  }
  std::vector<std::shared_ptr<Sink>> sinks(requests.size());
  std::mutex mutex;
  size_t next = 0;
  const Clock::time_point started = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < absl::GetFlag(FLAGS_concurrency); ++c) {
    clients.emplace_back([&] {
      while (true) {
        size_t index;
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (next == requests.size()) return;
          index = next++;
        }
        auto sink = std::make_shared<Sink>(Clock::now());
        sinks[index] = sink;
        if (!engine->Submit(requests[index], sink).ok()) std::exit(1);
        sink->Wait();
      }
    });
  }
  for (std::thread& client : clients) client.join();
  const double elapsed = Seconds(Clock::now() - started);
  std::vector<double> ttfts;
  int64_t tokens = 0, cached = 0, prompt = 0;
  for (const auto& sink : sinks) {
    ttfts.push_back(sink->ttft());
    tokens += sink->tokens();
    cached += sink->usage().cached_prompt_tokens;
    prompt += sink->usage().prompt_tokens;
  }
  ChatResult result;
  result.ttft_p50 = bench::Percentile(ttfts, 0.5);
  result.ttft_p90 = bench::Percentile(ttfts, 0.9);
  result.tokens_per_second = static_cast<double>(tokens) / elapsed;
  result.cached_fraction = static_cast<double>(cached) / static_cast<double>(prompt);
  return result;
}

struct BatchResult {
  double seconds = 0, tokens_per_second = 0;
  int64_t computed_prompt_tokens = 0;
};

BatchResult RunBatch(std::shared_ptr<const model::LlamaModel> llama, bool grouping, int64_t kv_bytes) {
  auto engine = MakeEngine(llama, true, grouping, kv_bytes);
  const int32_t vocab = static_cast<int32_t>(llama->config().vocab_size);
  std::mt19937 random(11);
  std::uniform_int_distribution<int> length(absl::GetFlag(FLAGS_min_prefix), absl::GetFlag(FLAGS_max_prefix));
  std::vector<std::vector<int32_t>> prefixes;
  for (int i = 0; i < absl::GetFlag(FLAGS_prefixes); ++i) prefixes.push_back(RandomTokens(random, length(random), vocab));
  std::vector<engine::EngineRequest> requests;
  for (int i = 0; i < absl::GetFlag(FLAGS_batch_requests); ++i) {
    std::vector<int32_t> prompt = prefixes[static_cast<size_t>(i) % prefixes.size()];
    const std::vector<int32_t> suffix = RandomTokens(random, absl::GetFlag(FLAGS_suffix_tokens), vocab);
    prompt.insert(prompt.end(), suffix.begin(), suffix.end());
    requests.push_back(MakeRequest(std::move(prompt), 0));
  }
  std::shuffle(requests.begin(), requests.end(), random);
  std::vector<std::shared_ptr<Sink>> sinks;
  const Clock::time_point started = Clock::now();
  for (size_t i = 0; i < requests.size(); ++i) {
    sinks.push_back(std::make_shared<Sink>(Clock::now()));
    // The queue holds --max-queued-requests beyond the running slots: submit as room appears.
    while (!engine->Submit(requests[i], sinks.back()).ok()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  BatchResult result;
  int64_t tokens = 0;
  for (const auto& sink : sinks) {
    sink->Wait();
    tokens += sink->tokens() + sink->usage().prompt_tokens;
    result.computed_prompt_tokens += sink->usage().prompt_tokens - sink->usage().cached_prompt_tokens;
  }
  result.seconds = Seconds(Clock::now() - started);
  result.tokens_per_second = static_cast<double>(tokens) / result.seconds;
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> arguments = common::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  auto loaded = model::LlamaModel::Load(model_dir, model::ModelOptions());
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<const model::LlamaModel> llama = std::move(*loaded);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "chat" || mode == "both") {
    const std::string adapters_dir = common::MakeTempDirectory("/tmp", "prefix-bench-adapters").value_or("/tmp");
    if (absl::Status written = tools::WriteDemoAdapters(model_dir, adapters_dir, absl::GetFlag(FLAGS_adapters), 8);
        !written.ok()) {
      std::fprintf(stderr, "%s\n", written.ToString().c_str());
      return 1;
    }
    std::printf("chat: %d requests, a %d-token system prompt + %d-token user turns, base + %d adapters, %d clients, "
                "%d tokens each\n",
                absl::GetFlag(FLAGS_requests), absl::GetFlag(FLAGS_system_tokens), absl::GetFlag(FLAGS_user_tokens),
                absl::GetFlag(FLAGS_adapters), absl::GetFlag(FLAGS_concurrency), absl::GetFlag(FLAGS_max_tokens));
    const ChatResult on = RunChat(llama, adapters_dir, true);
    const ChatResult off = RunChat(llama, adapters_dir, false);
    std::printf("%-10s %12s %12s %14s %16s\n", "cache", "TTFT p50", "TTFT p90", "tokens/s", "cached prompt");
    for (const auto& [name, result] : {std::pair{"on", on}, std::pair{"off", off}}) {
      std::printf("%-10s %10.3f s %10.3f s %14.2f %15.1f%%\n", name, result.ttft_p50, result.ttft_p90,
                  result.tokens_per_second, 100 * result.cached_fraction);
    }
    std::printf("off / on: TTFT p50 %.2fx lower, p90 %.2fx lower; throughput on / off %.2fx\n\n",
                off.ttft_p50 / on.ttft_p50, off.ttft_p90 / on.ttft_p90, on.tokens_per_second / off.tokens_per_second);
  }
  if (mode == "batch" || mode == "both") {
    std::printf("batch: %d requests over %d prefixes of %d-%d tokens + %d-token suffixes, random order, %d tokens each\n",
                absl::GetFlag(FLAGS_batch_requests), absl::GetFlag(FLAGS_prefixes), absl::GetFlag(FLAGS_min_prefix),
                absl::GetFlag(FLAGS_max_prefix), absl::GetFlag(FLAGS_suffix_tokens), absl::GetFlag(FLAGS_max_tokens));
    std::printf("%-14s %-10s %10s %12s %18s\n", "kv cache", "sharing", "seconds", "tokens/s", "prompt computed");
    for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_batch_kv_bytes), ',')) {
      int64_t kv_bytes = 0;
      if (!absl::SimpleAtoi(part, &kv_bytes)) continue;
      const BatchResult grouped = RunBatch(llama, true, kv_bytes);
      const BatchResult fifo = RunBatch(llama, false, kv_bytes);
      const int64_t kv_tokens = kv_bytes / llama->KvCacheBytesPerToken();
      for (const auto& [name, result] : {std::pair{"global", grouped}, std::pair{"fifo+cache", fifo}}) {
        std::printf("%8ld tok   %-10s %10.1f %12.1f %18ld\n", static_cast<long>(kv_tokens), name, result.seconds,
                    result.tokens_per_second, static_cast<long>(result.computed_prompt_tokens));
      }
      std::printf("global / fifo+cache: %.2fx tokens/s\n", grouped.tokens_per_second / fifo.tokens_per_second);
    }
  }
  return 0;
}
