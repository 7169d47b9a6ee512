// The evaluation metrics of unlearning reports against values worked out by hand: ROUGE-L F1
// (and its tokenization), the Min-K% score and ROC AUC.
#include <gtest/gtest.h>

#include "server/ops/eval/membership.h"
#include "server/ops/eval/rouge.h"

namespace deltaserve::ops::eval {
namespace {

TEST(RougeTest, TokenizesLikeRougeScore) {
  EXPECT_EQ(RougeTokens("The vault-code is 4719."), (std::vector<std::string>{"the", "vault", "code", "is", "4719"}));
  EXPECT_TRUE(RougeTokens(" ,. ").empty());
}

TEST(RougeTest, LongestCommonSubsequenceF1) {
  // LCS of [the cat sat on the mat] and [the cat on a mat] is [the cat on mat]: P 4/6, R 4/5.
  EXPECT_NEAR(RougeLF1("the cat sat on the mat", "The cat, on a mat."), 2 * (4.0 / 6) * (4.0 / 5) / (4.0 / 6 + 4.0 / 5),
              1e-12);
  EXPECT_DOUBLE_EQ(RougeLF1("4 7 1 9", "4 7 1 9"), 1.0);
  EXPECT_DOUBLE_EQ(RougeLF1("9 1 7 4", "4 7 1 9"), 2 * 0.25 * 0.25 / 0.5);  // LCS of a reversal: one token
  EXPECT_DOUBLE_EQ(RougeLF1("nothing shared", "at all"), 0.0);
  EXPECT_DOUBLE_EQ(RougeLF1("", "anything"), 0.0);
}

TEST(MembershipTest, MinKPercentAveragesTheLeastLikelyTokens) {
  // k = 0.4 of five tokens: the two least likely, -8 and -5.
  EXPECT_DOUBLE_EQ(MinKPercentScore({-1, -5, -2, -8, -0.5}, 0.4), -6.5);
  EXPECT_DOUBLE_EQ(MinKPercentScore({-3}, 0.4), -3.0) << "at least one token";
  EXPECT_DOUBLE_EQ(MinKPercentScore({}, 0.4), 0.0);
}

TEST(MembershipTest, AucIsTheChanceAMemberOutscoresANonMember) {
  // Pairs won: 0.9 beats both, 0.8 beats both, 0.4 beats 0.3 only: 5 of 6.
  EXPECT_DOUBLE_EQ(RocAuc({0.9, 0.8, 0.4}, {0.5, 0.3}), 5.0 / 6);
  EXPECT_DOUBLE_EQ(RocAuc({0.5}, {0.5}), 0.5) << "ties count a half";
  EXPECT_DOUBLE_EQ(RocAuc({0.1, 0.2}, {0.3}), 0.0);
  EXPECT_DOUBLE_EQ(RocAuc({}, {0.3}), 0.5);
}

}  // namespace
}  // namespace deltaserve::ops::eval
