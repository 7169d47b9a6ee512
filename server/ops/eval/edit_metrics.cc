#include "server/ops/eval/edit_metrics.h"

#include <cmath>
#include <map>

namespace deltaserve::ops::eval {

bool TargetIsArgmax(const at::Tensor& log_probs, const std::vector<int64_t>& target_ids) {
  if (log_probs.size(0) != static_cast<int64_t>(target_ids.size())) return false;
  const at::Tensor best = log_probs.argmax(-1).cpu();
  for (size_t t = 0; t < target_ids.size(); ++t) {
    if (best[static_cast<int64_t>(t)].item<int64_t>() != target_ids[t]) return false;
  }
  return true;
}

double SequenceLogProb(const at::Tensor& log_probs, const std::vector<int64_t>& ids) {
  const at::Tensor rows = log_probs.to(at::kDouble).cpu();
  double total = 0;
  for (size_t t = 0; t < ids.size() && static_cast<int64_t>(t) < rows.size(0); ++t) {
    total += rows[static_cast<int64_t>(t)][ids[t]].item<double>();
  }
  return total;
}

double UnchangedFraction(const std::vector<std::vector<int64_t>>& before,
                         const std::vector<std::vector<int64_t>>& after) {
  if (before.empty()) return 1.0;
  size_t unchanged = 0;
  for (size_t i = 0; i < before.size() && i < after.size(); ++i) unchanged += before[i] == after[i] ? 1 : 0;
  return static_cast<double>(unchanged) / static_cast<double>(before.size());
}

double NGramEntropy(const std::vector<int64_t>& tokens, int n) {
  if (n <= 0 || tokens.size() < static_cast<size_t>(n)) return 0;
  std::map<std::vector<int64_t>, int64_t> counts;
  for (size_t i = 0; i + n <= tokens.size(); ++i) ++counts[std::vector<int64_t>(tokens.begin() + i, tokens.begin() + i + n)];
  const double total = static_cast<double>(tokens.size() - n + 1);
  double entropy = 0;
  for (const auto& [gram, count] : counts) {
    const double p = count / total;
    entropy -= p * std::log2(p);
  }
  return entropy;
}

double Fluency(const std::vector<int64_t>& tokens) {
  return (2.0 / 3.0 * NGramEntropy(tokens, 2) + 4.0 / 3.0 * NGramEntropy(tokens, 3)) / 2.0;
}

}  // namespace deltaserve::ops::eval
