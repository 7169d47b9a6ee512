#include "server/ops/eval/membership.h"

#include <algorithm>
#include <cmath>

namespace deltaserve::ops::eval {

double MinKPercentScore(std::vector<double> token_logprobs, double k) {
  if (token_logprobs.empty()) return 0.0;
  const size_t count = std::clamp<size_t>(static_cast<size_t>(std::ceil(k * token_logprobs.size())), 1,
                                          token_logprobs.size());
  std::partial_sort(token_logprobs.begin(), token_logprobs.begin() + count, token_logprobs.end());
  double sum = 0;
  for (size_t i = 0; i < count; ++i) sum += token_logprobs[i];
  return sum / count;
}

double RocAuc(const std::vector<double>& members, const std::vector<double>& non_members) {
  if (members.empty() || non_members.empty()) return 0.5;
  double wins = 0;
  for (double member : members) {
    for (double other : non_members) wins += member > other ? 1.0 : member == other ? 0.5 : 0.0;
  }
  return wins / (static_cast<double>(members.size()) * non_members.size());
}

}  // namespace deltaserve::ops::eval
