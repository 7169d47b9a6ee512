// deltaserve-bench-linear-kernel [--out 11008] [--in 4096] [--rows 1] [--rounds 7] [--method by_rows|tiles|gemm]
// The weight product of a decode step of --rows sequences (1: batch-1 decode) of one real-shaped matrix, at
// every storage width and with every instruction set this CPU supports, against the memory read
// bandwidth measured right before each figure (summing a 512 MiB tensor with the same threads).
// Prints, per width and set, GB/s of weights streamed and that over the read bandwidth: the
// fraction of the bandwidth floor the kernel itself reaches, without the rest of a forward pass.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/percentile.h"
#include "server/model/cpu_linear.h"
#include "server/model/weight_matrix.h"

ABSL_FLAG(int64_t, out, 11008, "output features (weight rows)");
ABSL_FLAG(int64_t, in, 4096, "input features");
ABSL_FLAG(int64_t, rows, 1, "input rows (sequences in the decode step)");
ABSL_FLAG(int, rounds, 7, "rounds; each measures the bandwidth, then every kernel");
ABSL_FLAG(std::string, method, "by_rows",
          "by_rows (as served: the packed GEMM from 32 rows), tiles (register tiles) or gemm (the packed GEMM)");
ABSL_FLAG(int, matrices, 8, "distinct matrices cycled through, so that no call finds one in cache");

namespace {

using Clock = std::chrono::steady_clock;
using namespace deltaserve;

template <typename F>
double Seconds(F&& run) {
  const auto started = Clock::now();
  run();
  return std::chrono::duration<double>(Clock::now() - started).count();
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  c10::InferenceMode inference;
  const int64_t out = absl::GetFlag(FLAGS_out), in = absl::GetFlag(FLAGS_in);
  const int count = absl::GetFlag(FLAGS_matrices);
  const std::vector<at::ScalarType> widths = {at::kFloat, at::kBFloat16, at::kHalf, at::kChar};
  std::vector<std::vector<model::WeightMatrix>> matrices(widths.size());
  for (int m = 0; m < count; ++m) {
    const at::Tensor dense = at::randn({out, in}) * 0.02;
    for (size_t w = 0; w < widths.size(); ++w) {
      model::WeightMatrix m = model::StoreAtWidth(dense, widths[w]);
      matrices[w].push_back(m);
    }
  }
  const int64_t rows = absl::GetFlag(FLAGS_rows);
  const std::string method_name = absl::GetFlag(FLAGS_method);
  if (method_name != "by_rows" && method_name != "tiles" && method_name != "gemm") {
    std::fprintf(stderr, "--method must be by_rows, tiles or gemm, not \"%s\"\n", method_name.c_str());
    return 1;
  }
  using model::cpu_kernels::LinearMethod;
  const LinearMethod method = method_name == "tiles"  ? LinearMethod::kRegisterTiles
                              : method_name == "gemm" ? LinearMethod::kPackedGemm
                                                      : LinearMethod::kByRows;
  const at::Tensor x = at::randn({rows, in});
  at::Tensor y = at::empty({rows, out});
  at::Tensor buffer = at::ones({int64_t{128} << 20});
  const std::vector<model::cpu_kernels::LinearKernelSet> sets = model::cpu_kernels::SupportedLinearKernelSets();
  // ratios[width][set]
  std::vector<std::vector<std::vector<double>>> ratios(widths.size(), std::vector<std::vector<double>>(sets.size()));
  std::vector<std::vector<std::vector<double>>> rates = ratios;
  for (int round = 0; round < absl::GetFlag(FLAGS_rounds); ++round) {
    for (size_t w = 0; w < widths.size(); ++w) {
      for (size_t s = 0; s < sets.size(); ++s) {
        double bandwidth = 0;
        for (int i = 0; i < 2; ++i) {
          bandwidth = std::max(bandwidth, static_cast<double>(buffer.nbytes()) /
                                              Seconds([&] { (void)buffer.sum().item<float>(); }));
        }
        std::vector<double> times;
        for (int m = 0; m < 2 * count; ++m) {
          const model::WeightMatrix& weight = matrices[w][m % count];
          times.push_back(Seconds([&] { model::cpu_kernels::CpuLinearInto(sets[s], method, x, weight, at::Tensor(), y); }));
        }
        const double bytes = static_cast<double>(matrices[w][0].values.nbytes());
        const double rate = bytes / bench::Percentile(times, 0.5);
        rates[w][s].push_back(rate / 1e9);
        ratios[w][s].push_back(rate / bandwidth);
      }
    }
  }
  std::printf("%ld-row product of a [%ld, %ld] matrix (%s); medians of %d rounds\n", static_cast<long>(rows),
              static_cast<long>(out), static_cast<long>(in), method_name.c_str(), absl::GetFlag(FLAGS_rounds));
  std::printf("width     set       weights_GB/s  of_read_bandwidth\n");
  for (size_t w = 0; w < widths.size(); ++w) {
    for (size_t s = 0; s < sets.size(); ++s) {
      std::printf("%-9s %-9s %12.2f  %17.2f\n", c10::toString(widths[w]), sets[s].name,
                  bench::Percentile(rates[w][s], 0.5), bench::Percentile(ratios[w][s], 0.5));
    }
  }
  return 0;
}
