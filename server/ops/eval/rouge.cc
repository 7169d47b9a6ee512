#include "server/ops/eval/rouge.h"

#include <algorithm>
#include <cctype>

namespace deltaserve::ops::eval {

std::vector<std::string> RougeTokens(const std::string& text) {
  std::vector<std::string> tokens;
  std::string current;
  for (unsigned char c : text) {
    if (std::isalnum(c) && c < 128) {
      current.push_back(static_cast<char>(std::tolower(c)));
    } else if (!current.empty()) {
      tokens.push_back(std::move(current));
      current.clear();
    }
  }
  if (!current.empty()) tokens.push_back(std::move(current));
  return tokens;
}

double RougeLF1(const std::vector<std::string>& candidate, const std::vector<std::string>& reference) {
  if (candidate.empty() || reference.empty()) return 0.0;
  // LCS length by dynamic programming over one row.
  std::vector<size_t> previous(reference.size() + 1, 0), current(reference.size() + 1, 0);
  for (const std::string& token : candidate) {
    for (size_t j = 1; j <= reference.size(); ++j) {
      current[j] = token == reference[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], current[j - 1]);
    }
    std::swap(previous, current);
  }
  const double lcs = static_cast<double>(previous[reference.size()]);
  if (lcs == 0) return 0.0;
  const double precision = lcs / candidate.size(), recall = lcs / reference.size();
  return 2 * precision * recall / (precision + recall);
}

double RougeLF1(const std::string& candidate, const std::string& reference) {
  return RougeLF1(RougeTokens(candidate), RougeTokens(reference));
}

}  // namespace deltaserve::ops::eval
