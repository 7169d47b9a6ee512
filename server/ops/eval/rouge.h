// ROUGE-L F1 between a candidate and a reference text (MUSE's verbatim and knowledge
// memorisation metrics): the longest common subsequence of their tokens, P = LCS/|candidate|,
// R = LCS/|reference|, F1 = 2PR/(P+R) (0 when either is empty or they share nothing). Texts are
// tokenized as the rouge-score package does by default: lower-cased, every run of characters
// other than ASCII letters and digits is a separator. Pure functions; thread-safe.
//   double score = RougeLF1("the vault code is 4 7 1 9", "The vault code is 4719.");
#pragma once

#include <string>
#include <vector>

namespace deltaserve::ops::eval {

std::vector<std::string> RougeTokens(const std::string& text);
double RougeLF1(const std::vector<std::string>& candidate, const std::vector<std::string>& reference);
double RougeLF1(const std::string& candidate, const std::string& reference);

}  // namespace deltaserve::ops::eval
