// deltaserve-load --target HOST:PORT [--streams 1,4,16,64] [--requests-per-stream N]
//                 [--max-tokens N] [--prompt-words N] [--seed S] [--duration-limit-seconds T]
// Drives a running deltaserve over gRPC with N concurrent streams (fixed prompt and output
// lengths, seeded sampling), and reports tokens/s, time to first token and inter-token latency
// percentiles (measured at the client), plus throughput as a ratio to the first stream count.
// Bounded: each level sends streams * requests_per_stream requests and stops at the time limit.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "bench/percentile.h"
#include "client/deltaserve_client.h"
#include "server/common/flag_names.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "server address (loopback)");
ABSL_FLAG(std::string, streams, "1,4,16,64", "concurrent stream counts, one run each");
ABSL_FLAG(int, requests_per_stream, 4, "requests each stream sends, one after another");
ABSL_FLAG(int, max_tokens, 64, "tokens generated per request");
ABSL_FLAG(int, prompt_words, 32, "words in each prompt");
ABSL_FLAG(uint64_t, seed, 1, "base sampling seed");
ABSL_FLAG(double, duration_limit_seconds, 300, "stop a level after this long");

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = deltaserve::v1;
using deltaserve::bench::Percentile;

struct Level {
  double tokens_per_second = 0;
  std::vector<double> ttft, itl;
  int errors = 0;
};

Level RunLevel(deltaserve::client::DeltaserveClient& client, int streams) {
  Level level;
  std::mutex mutex;
  std::atomic<int64_t> tokens{0};
  const auto started = Clock::now();
  const auto limit = started + std::chrono::duration<double>(absl::GetFlag(FLAGS_duration_limit_seconds));
  std::vector<std::thread> threads;
  for (int s = 0; s < streams; ++s) {
    threads.emplace_back([&, s] {
      std::string prompt = "the";
      for (int w = 1; w < absl::GetFlag(FLAGS_prompt_words); ++w) prompt += (w + s) % 3 ? " cat" : " reads";
      for (int r = 0; r < absl::GetFlag(FLAGS_requests_per_stream) && Clock::now() < limit; ++r) {
        v1::GenerateRequest request;
        request.set_prompt(prompt);
        request.mutable_sampling()->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
        request.mutable_sampling()->set_ignore_eos(true);
        request.mutable_sampling()->set_temperature(0.8f);
        request.mutable_sampling()->set_seed(absl::GetFlag(FLAGS_seed) + s * 1000 + r);
        request.mutable_sampling()->set_has_seed(true);
        const auto sent = Clock::now();
        auto last = sent;
        std::vector<double> ttft, itl;
        grpc::Status status = client.Generate(request, [&](const v1::GenerateResponse& response) {
          if (response.token_ids_size() == 0) return;
          const auto now = Clock::now();
          if (ttft.empty()) ttft.push_back(std::chrono::duration<double>(now - sent).count());
          else itl.push_back(std::chrono::duration<double>(now - last).count() / response.token_ids_size());
          last = now;
          tokens += response.token_ids_size();
        });
        std::lock_guard<std::mutex> lock(mutex);
        if (!status.ok()) ++level.errors;
        level.ttft.insert(level.ttft.end(), ttft.begin(), ttft.end());
        level.itl.insert(level.itl.end(), itl.begin(), itl.end());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  level.tokens_per_second = tokens.load() / std::chrono::duration<double>(Clock::now() - started).count();
  return level;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> arguments = deltaserve::common::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  auto client = deltaserve::client::DeltaserveClient::Connect(absl::GetFlag(FLAGS_target));
  if (!client->WaitForReady(std::chrono::seconds(10))) {
    std::fprintf(stderr, "cannot reach %s\n", absl::GetFlag(FLAGS_target).c_str());
    return 1;
  }
  std::printf("streams  tokens/s  ratio  ttft_p50_ms  ttft_p90_ms  ttft_p99_ms  itl_p50_ms  itl_p90_ms  itl_p99_ms  errors\n");
  double base = 0;
  for (absl::string_view item : absl::StrSplit(absl::GetFlag(FLAGS_streams), ',')) {
    const int streams = std::stoi(std::string(item));
    Level level = RunLevel(*client, streams);
    if (base == 0) base = level.tokens_per_second;
    std::printf("%7d  %8.1f  %5.2f  %11.1f  %11.1f  %11.1f  %10.2f  %10.2f  %10.2f  %6d\n", streams,
                level.tokens_per_second, level.tokens_per_second / base,
                Percentile(level.ttft, 0.5) * 1e3, Percentile(level.ttft, 0.9) * 1e3,
                Percentile(level.ttft, 0.99) * 1e3, Percentile(level.itl, 0.5) * 1e3,
                Percentile(level.itl, 0.9) * 1e3, Percentile(level.itl, 0.99) * 1e3, level.errors);
    std::fflush(stdout);
  }
  return 0;
}
