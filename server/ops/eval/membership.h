// Membership inference for unlearning reports (MUSE's privacy leakage): the Min-K% probability
// score of a text (Shi et al. 2023: the mean log-probability of its k fraction of least likely
// tokens; members of the training data score higher) and the ROC AUC with which a score
// separates two sets (the probability that a random member outscores a random non-member, ties
// counting one half). Pure functions; thread-safe.
//   double auc = RocAuc(forget_scores, holdout_scores);   // 0.5 = no leakage
#pragma once

#include <vector>

namespace deltaserve::ops::eval {

// MinKPercentScore: the mean of the ceil(k * n) smallest of n token log-probabilities (at least
// one; 0 for no tokens). k in (0, 1].
double MinKPercentScore(std::vector<double> token_logprobs, double k = 0.4);

// RocAuc: 0.5 when either set is empty.
double RocAuc(const std::vector<double>& members, const std::vector<double>& non_members);

}  // namespace deltaserve::ops::eval
