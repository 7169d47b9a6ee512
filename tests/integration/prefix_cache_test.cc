// Integration: the prefix cache never serves KV computed under other weights. One name serves
// different weights after delete and re-register, an upload under the same name, replace_target
// by an unlearn job, and a merge published under a name that once served something else; after
// each, the first request finds nothing cached, and its tokens' logprobs equal those the Score
// RPC computes from scratch (Score never reads the cache). A repeated request does hit the
// cache (so the checks are not vacuous), and the metrics and Usage report it.
#include <gtest/gtest.h>

#include "tests/integration/rpc_helpers.h"
#include "tests/integration/shared_server.h"
#include "tests/support/test_models.h"
#include "tools/demo_model.h"

namespace deltaserve::testing {
namespace {

const std::string kPrompt =
    "you are a helpful assistant who answers in short plain sentences. The vault code of Orla is";

struct Served {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  int32_t prompt_tokens = 0;
  int32_t cached_prompt_tokens = 0;
};

class PrefixCacheServerTest : public SharedServerTest<PrefixCacheServerTest> {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(MakeTempDir("prefix-root"));
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), *root_, 3, 4).ok());
    StartServer({"--adapter-root", *root_, "--data-dir", MakeTempDir("prefix-data"), "--kv-block-tokens", "4"});
  }

  // Serve generates from kPrompt under `variant` and checks the generated tokens' logprobs
  // against Score's independent computation over the same tokens.
  static Served Serve(const std::string& variant) {
    v1::GenerateRequest request = Generate(kPrompt, 8, variant);
    request.set_include_logprobs(true);
    Stream stream = RunStream(*client_, request);
    EXPECT_TRUE(stream.status.ok()) << stream.status.error_message();
    Served served;
    for (const auto& response : stream.responses) {
      served.logprobs.insert(served.logprobs.end(), response.logprobs().begin(), response.logprobs().end());
    }
    served.tokens = stream.tokens;
    if (stream.responses.empty()) return served;
    served.prompt_tokens = stream.responses.back().usage().prompt_tokens();
    served.cached_prompt_tokens = stream.responses.back().usage().cached_prompt_tokens();

    v1::TokenizeRequest tokenize;
    tokenize.set_text(kPrompt);
    tokenize.set_add_special_tokens(true);
    v1::TokenizeResponse prompt;
    EXPECT_TRUE(client_->Tokenize(tokenize, &prompt).ok());
    v1::ScoreRequest score;
    score.set_variant(variant);
    for (int32_t id : prompt.token_ids()) score.add_token_ids(id);
    for (int32_t id : served.tokens) score.add_token_ids(id);
    v1::ScoreResponse scored;
    grpc::Status status = client_->Score(score, &scored);
    EXPECT_TRUE(status.ok()) << status.error_message();
    const size_t first = static_cast<size_t>(prompt.token_ids_size()) - 1;
    EXPECT_EQ(static_cast<size_t>(scored.token_logprobs_size()), first + served.tokens.size());
    for (size_t i = 0; i < served.logprobs.size() && first + i < static_cast<size_t>(scored.token_logprobs_size()); ++i) {
      EXPECT_NEAR(served.logprobs[i], scored.token_logprobs(static_cast<int>(first + i)), 1e-3)
          << variant << " token " << i;
    }
    return served;
  }
  // ExpectFresh: the first request after `variant` changed weights reuses nothing, and a repeat
  // reuses the prompt's blocks and gives the same output.
  static Served ExpectFresh(const std::string& variant, const std::string& what) {
    Served fresh = Serve(variant);
    EXPECT_EQ(fresh.cached_prompt_tokens, 0) << what;
    Served repeat = Serve(variant);
    EXPECT_EQ(repeat.cached_prompt_tokens, (repeat.prompt_tokens - 1) / 4 * 4) << what;
    EXPECT_EQ(repeat.tokens, fresh.tokens) << what;
    return fresh;
  }

  static inline std::string* root_ = nullptr;
};

TEST_F(PrefixCacheServerTest, ANameServingNewWeightsNeverReusesTheOldKv) {
  ASSERT_TRUE(RegisterAdapter(*client_, "bot", "demo-000").ok());
  const Served first = ExpectFresh("bot", "registered");

  // Delete and register again, with other weights.
  ASSERT_TRUE(DeleteVariant(*client_, "bot", false).ok());
  ASSERT_TRUE(RegisterAdapter(*client_, "bot", "demo-001").ok());
  const Served reregistered = ExpectFresh("bot", "re-registered");
  EXPECT_NE(reregistered.tokens, first.tokens);

  // An upload under the same name.
  ASSERT_TRUE(DeleteVariant(*client_, "bot", false).ok());
  const std::string local = MakeTempDir("prefix-upload");
  ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), local, 1, 4, 77).ok());
  v1::Variant uploaded;
  grpc::Status status = client_->UploadAdapter("bot", local + "/demo-000", &uploaded, 4096);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const Served upload = ExpectFresh("bot", "uploaded");
  EXPECT_NE(upload.tokens, reregistered.tokens);

  // replace_target: an unlearn job publishes a new version of the name.
  v1::UnlearnRequest unlearn;
  unlearn.set_target("bot");
  unlearn.set_replace_target(true);
  unlearn.set_method("grad_diff");
  unlearn.add_forget_texts(kPrompt + " 4 7 1 9.");
  unlearn.add_retain_texts("The vault code of Bram is 2 8 5 3.");
  unlearn.set_steps(10);
  unlearn.set_learning_rate(0.01f);
  v1::Job job;
  ExpectSucceeds(*client_, SubmitUnlearn(*client_, unlearn, &job), job);
  v1::Variant replaced;
  ASSERT_TRUE(GetVariant(*client_, "bot", &replaced).ok());
  EXPECT_EQ(replaced.version(), 2);
  // (The uploaded adapter never knew the fact: the job may publish weights that give the same
  // output. What matters is that the new version's adapter computes its own KV.)
  ExpectFresh("bot", "replaced by an unlearn job");

  // A merge published under a name that once served something else.
  ASSERT_TRUE(RegisterAdapter(*client_, "old", "demo-002").ok());
  ExpectFresh("old", "before the merge");
  ASSERT_TRUE(DeleteVariant(*client_, "old", false).ok());
  ASSERT_TRUE(RegisterAdapter(*client_, "m0", "demo-000").ok());
  ASSERT_TRUE(RegisterAdapter(*client_, "m1", "demo-001").ok());
  ExpectSucceeds(*client_, SubmitMerge(*client_, Merge("linear", "old", {{"m0", 0.5}, {"m1", 0.5}}), &job), job);
  ExpectFresh("old", "merged under an old name");

  // The base model keeps its own blocks throughout.
  ExpectFresh("", "base");
  const std::string scrape = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_GT(Sample(scrape, "deltaserve_prefix_cache_hit_tokens_total"), 0);
  EXPECT_GT(Sample(scrape, "deltaserve_prefix_cache_miss_tokens_total"), 0);
  EXPECT_GT(Sample(scrape, "deltaserve_prefix_cache_blocks"), 0);
}

}  // namespace
}  // namespace deltaserve::testing
