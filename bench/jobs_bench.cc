// deltaserve-bench-jobs --target HOST:PORT [--methods cat,svd,ties,...] [--input-counts 2,4,8]
//                       [--rank 16] [--max-tokens 32]
// Merge jobs through a running deltaserve (whose variants include demo-000, demo-001, ...),
// each while one client generates back to back: per method and input count it reports the
// job's time (created to finished, as the server records it) and the generation latency during
// the job as a ratio to the latency measured alone just before (median and 90th percentile).
// Bounded: one job per row, generations stop when the job ends. Loopback only.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
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
ABSL_FLAG(std::string, methods, "cat,svd,task_arithmetic,ties,dare_ties,breadcrumbs_ties", "merge methods");
ABSL_FLAG(std::string, input_counts, "2,4,8", "inputs per merge (demo-000, demo-001, ...)");
ABSL_FLAG(int, rank, 16, "output rank");
ABSL_FLAG(int, max_tokens, 32, "tokens per measured generation");
ABSL_FLAG(int, baseline_requests, 8, "generations measured alone before each job");

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = deltaserve::v1;
using deltaserve::bench::Percentile;

// One greedy generation through demo-000; returns its latency in seconds (< 0 on error).
double Generation(deltaserve::client::DeltaserveClient& client) {
  v1::GenerateRequest request;
  request.set_variant("demo-000");
  request.set_prompt("the old river runs past the mill and the");
  request.mutable_sampling()->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  request.mutable_sampling()->set_ignore_eos(true);
  const auto start = Clock::now();
  grpc::Status status = client.Generate(request, [](const v1::GenerateResponse&) {});
  if (!status.ok()) {
    std::fprintf(stderr, "generate: %s\n", status.error_message().c_str());
    return -1;
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double Seconds(const google::protobuf::Timestamp& from, const google::protobuf::Timestamp& to) {
  return (to.seconds() - from.seconds()) + (to.nanos() - from.nanos()) * 1e-9;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> arguments = deltaserve::common::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  auto client = deltaserve::client::DeltaserveClient::Connect(absl::GetFlag(FLAGS_target));
  if (!client->WaitForReady(std::chrono::seconds(30))) {
    std::fprintf(stderr, "cannot reach %s\n", absl::GetFlag(FLAGS_target).c_str());
    return 1;
  }
  std::printf("%-18s %6s %9s %14s %14s %9s\n", "method", "inputs", "job_s", "p50_busy/alone", "p90_busy/alone",
              "requests");
  int row = 0;
  for (absl::string_view method : absl::StrSplit(absl::GetFlag(FLAGS_methods), ',')) {
    for (absl::string_view count_text : absl::StrSplit(absl::GetFlag(FLAGS_input_counts), ',')) {
      const int count = std::stoi(std::string(count_text));
      std::vector<double> alone;
      for (int i = 0; i < absl::GetFlag(FLAGS_baseline_requests); ++i) alone.push_back(Generation(*client));

      v1::MergeRequest request;
      request.set_method(std::string(method));
      request.set_output("bench/merge-" + std::to_string(row++) + "-" + std::to_string(getpid()));
      request.set_rank(absl::GetFlag(FLAGS_rank));
      request.set_density(0.5f);
      for (int i = 0; i < count; ++i) {
        char name[16];
        std::snprintf(name, sizeof(name), "demo-%03d", i);
        v1::MergeInput* input = request.add_inputs();
        input->set_variant(name);
        input->set_weight(1.0 / count);
      }
      v1::Job job;
      grpc::ClientContext submit_context;
      grpc::Status status = client->jobs().SubmitMerge(&submit_context, request, &job);
      if (!status.ok()) {
        std::fprintf(stderr, "%s: %s\n", request.method().c_str(), status.error_message().c_str());
        return 1;
      }
      std::atomic<bool> finished{false};
      std::vector<double> busy;
      std::thread generating([&] {
        while (!finished) busy.push_back(Generation(*client));
      });
      grpc::ClientContext watch_context;
      v1::WatchJobRequest watch;
      watch.set_id(job.id());
      auto reader = client->jobs().WatchJob(&watch_context, watch);
      while (reader->Read(&job)) {
      }
      status = reader->Finish();
      finished = true;
      generating.join();
      if (!status.ok() || job.state() != v1::SUCCEEDED) {
        std::fprintf(stderr, "%s: job %s %s\n", request.method().c_str(), v1::JobState_Name(job.state()).c_str(),
                     job.error().c_str());
        return 1;
      }
      std::printf("%-18s %6d %9.2f %14.2f %14.2f %9zu\n", request.method().c_str(), count,
                  Seconds(job.started(), job.finished()), Percentile(busy, 0.5) / Percentile(alone, 0.5),
                  Percentile(busy, 0.9) / Percentile(alone, 0.9), busy.size());
      std::fflush(stdout);
    }
  }
  return 0;
}
