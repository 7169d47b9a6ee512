// deltaserve-bench-merge --adapters-dir DIR --model-dir DIR [--counts 2,4,8] [--methods ...]
// Merge time and peak memory per method for N rank-16 demo adapters of the medium model: each
// merge reads its inputs (host memory), runs MergeVariants to --rank, and reports wall time
// and the growth of the process's peak resident set over the inputs (VmHWM, reset before each
// merge through /proc/self/clear_refs). Not part of ctest.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "server/common/flag_names.h"
#include "server/deltas/peft_adapter.h"
#include "server/model/model_config.h"
#include "server/ops/merge/merge_variants.h"

ABSL_FLAG(std::string, model_dir, "", "the base model (its config.json)");
ABSL_FLAG(std::string, adapters_dir, "", "PEFT adapters demo-000, demo-001, ...");
ABSL_FLAG(std::string, counts, "2,4,8", "numbers of adapters merged");
ABSL_FLAG(std::string, methods, "cat,svd,task_arithmetic,ties,dare_ties,breadcrumbs_ties",
          "merge methods to time");
ABSL_FLAG(int, rank, 16, "output rank (all methods but cat)");

namespace {

using namespace deltaserve;

// Kibibytes of a /proc/self/status field such as VmHWM or VmRSS.
long StatusKib(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  }
  return -1;
}

void ResetPeak() { std::ofstream("/proc/self/clear_refs") << "5"; }

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> arguments = common::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  auto config = model::ModelConfig::FromFile(absl::GetFlag(FLAGS_model_dir) + "/config.json");
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 1;
  }
  std::vector<int> counts;
  for (absl::string_view item : absl::StrSplit(absl::GetFlag(FLAGS_counts), ',')) counts.push_back(std::stoi(std::string(item)));
  const int most = *std::max_element(counts.begin(), counts.end());
  std::vector<deltas::DeltaSet> adapters;
  for (int i = 0; i < most; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "/demo-%03d", i);
    auto adapter = deltas::ReadPeftAdapter(absl::GetFlag(FLAGS_adapters_dir) + name, *config, at::kFloat, at::kCPU);
    if (!adapter.ok()) {
      std::fprintf(stderr, "%s\n", adapter.status().ToString().c_str());
      return 1;
    }
    adapters.push_back(std::move(adapter->deltas));
  }
  std::printf("merging rank-%ld adapters of %.1f MiB each to rank %d (cat keeps the sum of ranks)\n",
              static_cast<long>(adapters[0].MaxRank()), adapters[0].Bytes() / 1048576.0, absl::GetFlag(FLAGS_rank));
  // measured = the inputs plus the growth of the peak resident set during the merge; estimate =
  // EstimateMergeBytes, what a merge job reserves of --job-memory-bytes (it should not be lower).
  std::printf("%-18s %7s %10s %14s %12s %12s\n", "method", "inputs", "seconds", "measured_MiB", "estimate_MiB",
              "max_rel_err");
  for (absl::string_view method : absl::StrSplit(absl::GetFlag(FLAGS_methods), ',')) {
    for (int count : counts) {
      std::vector<ops::merge::WeightedDeltas> inputs;
      for (int i = 0; i < count; ++i) inputs.push_back({&adapters[i], 1.0 / count});
      ops::merge::MergeRecipe recipe;
      recipe.method = std::string(method);
      recipe.rank = absl::GetFlag(FLAGS_rank);
      recipe.density = 0.5;
      recipe.gamma = 0.01;
      ResetPeak();
      const long before = StatusKib("VmRSS");
      const auto started = std::chrono::steady_clock::now();
      auto merged = ops::merge::MergeVariants(inputs, recipe);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      const long peak = StatusKib("VmHWM");
      if (!merged.ok()) {
        std::fprintf(stderr, "%s: %s\n", recipe.method.c_str(), merged.status().ToString().c_str());
        return 1;
      }
      double worst = 0;
      for (const auto& error : merged->errors) worst = std::max(worst, error.relative_error);
      int64_t summed_rank = 0;
      std::vector<int64_t> input_bytes;
      for (const auto& input : inputs) {
        input_bytes.push_back(input.deltas->Bytes());
        summed_rank += input.deltas->MaxRank();
      }
      const int64_t inputs_total = input_bytes[0] * count;
      const int64_t estimate = ops::merge::EstimateMergeBytes(*config, recipe, input_bytes, summed_rank);
      std::printf("%-18s %7d %10.3f %14.1f %12.1f %12.4f\n", recipe.method.c_str(), count, seconds,
                  (peak - before) / 1024.0 + inputs_total / 1048576.0, estimate / 1048576.0, worst);
      std::fflush(stdout);
    }
  }
  return 0;
}
