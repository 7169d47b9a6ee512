// The per-edit measures of knowledge-edit evaluation (CounterFact-style, as in the ROME and
// MEMIT papers), on what the model produced; the edit job runs the model and averages them:
//   - TargetIsArgmax: teacher-forced, every target token is the argmax at its position
//     (efficacy on the edit's prompt, generalisation on its paraphrases).
//   - TargetMoreLikely: the target's total log-probability exceeds the original answer's (the
//     looser efficacy measure, "target more probable than the original").
//   - UnchangedFraction: locality, the fraction of neighbourhood prompts whose continuation is
//     the same after the edit as before.
//   - NGramEntropy / Fluency: the entropy (bits) of the distribution of n-grams of a generated
//     token sequence, and the weighted mean (2/3 H2 + 4/3 H3) / 2 that the papers report as
//     fluency (repetitive text scores low).
// Pure functions; thread-safe.
//   bool hit = TargetIsArgmax(log_probs, target_ids);   // log_probs [target tokens, vocab]
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace deltaserve::ops::eval {

// `log_probs` [T, vocab]: row t predicts `target_ids[t]`.
bool TargetIsArgmax(const at::Tensor& log_probs, const std::vector<int64_t>& target_ids);
// Sum of the log-probabilities of `ids` at their rows.
double SequenceLogProb(const at::Tensor& log_probs, const std::vector<int64_t>& ids);
inline bool TargetMoreLikely(double target_log_prob, double original_log_prob) {
  return target_log_prob > original_log_prob;
}
// UnchangedFraction: 1 when there is nothing to compare.
double UnchangedFraction(const std::vector<std::vector<int64_t>>& before,
                         const std::vector<std::vector<int64_t>>& after);
double NGramEntropy(const std::vector<int64_t>& tokens, int n);
double Fluency(const std::vector<int64_t>& tokens);

}  // namespace deltaserve::ops::eval
