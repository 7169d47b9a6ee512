// Percentile: the p-quantile (p in [0, 1]) of measured values by nearest rank, 0 for none. For
// the benchmarks' latency reports.
//   double p90 = deltaserve::bench::Percentile(latencies, 0.9);
#pragma once

#include <algorithm>
#include <vector>

namespace deltaserve::bench {

inline double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(p * (values.size() - 1) + 0.5))];
}

}  // namespace deltaserve::bench
