// Integration: merge jobs on the real server. A merge's output serves the moment WatchJob
// reports SUCCEEDED and scores like an independent reference (the adapter it re-weights, or
// the base when inputs cancel); lineage and evaluation are recorded; bad requests are refused
// with the reason; idempotency keys and listing work; deltactl drives it all (generation
// latency during merges: serving_under_jobs_test.cc). The lifecycle tests start their own servers: cancel,
// and kill -9 during a merge followed by a restart.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server/common/file_util.h"
#include "tests/integration/rpc_helpers.h"
#include "tests/integration/server_process.h"
#include "tests/integration/shared_server.h"
#include "tests/support/test_models.h"
#include "tests/support/wait_until.h"
#include "tools/demo_model.h"

namespace deltaserve::testing {
namespace {

constexpr const char* kText = "the cat reads a book by the river";

// RunMerge submits and follows a merge; it must succeed.
v1::Job RunMerge(DeltaserveClient& client, const v1::MergeRequest& request) {
  v1::Job job;
  grpc::Status status = SubmitMerge(client, request, &job);
  return ExpectSucceeds(client, status, job);
}

// WaitForJob polls GetJob until `done` holds (or 60 s pass) and returns the last record.
v1::Job WaitForJob(DeltaserveClient& client, const std::string& id, const std::function<bool(const v1::Job&)>& done) {
  v1::Job job;
  if (!testing::WaitUntil([&] { return GetJob(client, id, &job).ok() && done(job); }, absl::Seconds(60))) {
    ADD_FAILURE() << "job " << id << " never reached the expected state; last: " << job.ShortDebugString();
  }
  return job;
}

std::vector<float> Logprobs(DeltaserveClient& client, const std::string& variant) {
  v1::ScoreRequest request;
  request.set_variant(variant);
  request.set_text(kText);
  v1::ScoreResponse response;
  grpc::Status status = client.Score(request, &response, std::chrono::seconds(60));
  EXPECT_TRUE(status.ok()) << variant << ": " << status.error_message();
  return {response.token_logprobs().begin(), response.token_logprobs().end()};
}

double MaxDifference(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double largest = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) largest = std::max<double>(largest, std::abs(a[i] - b[i]));
  return largest;
}

class JobsServerTest : public SharedServerTest<JobsServerTest> {
 protected:
  static void SetUpTestSuite() {
    adapters_ = new std::string(MakeTempDir("jobs-adapters"));
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), *adapters_, 8, 4).ok());
    StartServer({"--adapter-dir", *adapters_});
  }
  static inline std::string* adapters_ = nullptr;
};

TEST_F(JobsServerTest, ACatMergeServesTheMomentItSucceedsAndScoresLikeTheWeightedSum) {
  // One adapter at weight 1 is that adapter; the same adapter at +1 and -1 cancels to the base.
  v1::Job one = RunMerge(*client_, Merge("cat", "merged/cat-one", {{"demo-000", 1.0}}));
  EXPECT_EQ(one.output_variant(), "merged/cat-one");
  EXPECT_LT(MaxDifference(Logprobs(*client_, "merged/cat-one"), Logprobs(*client_, "demo-000")), 1e-4);
  EXPECT_GT(MaxDifference(Logprobs(*client_, "demo-000"), Logprobs(*client_, "")), 1e-3) << "the adapter matters";

  RunMerge(*client_, Merge("cat", "merged/cancel", {{"demo-001", 1.0}, {"demo-001", -1.0}}));
  EXPECT_LT(MaxDifference(Logprobs(*client_, "merged/cancel"), Logprobs(*client_, "")), 1e-4);

  // Generation works with the new name right away, and the variant says where it came from.
  Stream stream = RunStream(*client_, Generate("the cat reads", 6, "merged/cat-one"));
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ(stream.tokens, RunStream(*client_, Generate("the cat reads", 6, "demo-000")).tokens);
  v1::Variant variant;
  ASSERT_TRUE(GetVariant(*client_, "merged/cancel", &variant).ok());
  EXPECT_EQ(variant.kind(), v1::MERGE);
  ASSERT_EQ(variant.lineage().parents_size(), 1);
  EXPECT_EQ(variant.lineage().parents(0), "demo-001");
  EXPECT_FALSE(variant.lineage().job_id().empty());
  auto recipe = nlohmann::json::parse(variant.lineage().recipe_json());
  EXPECT_EQ(recipe["method"], "cat");
  ASSERT_EQ(recipe["inputs"].size(), 2u);
  EXPECT_EQ(recipe["inputs"][1]["weight"], -1.0);
  EXPECT_EQ(nlohmann::json::parse(variant.evaluation_json())["exact"], true);
  EXPECT_EQ(variant.ranks(0).rank(), 8) << "cat keeps both rank-4 factors";
}

TEST_F(JobsServerTest, SvdAndTiesRecompressToTheRankAndReportTheirErrors) {
  // svd of one rank-4 adapter at rank 4 is exact: same scores, zero error.
  v1::Job svd = RunMerge(*client_, Merge("svd", "merged/svd-one", {{"demo-002", 1.0}}, 4));
  EXPECT_LT(MaxDifference(Logprobs(*client_, "merged/svd-one"), Logprobs(*client_, "demo-002")), 1e-4);
  v1::Variant variant;
  ASSERT_TRUE(GetVariant(*client_, "merged/svd-one", &variant).ok());
  auto evaluation = nlohmann::json::parse(variant.evaluation_json());
  EXPECT_LT(evaluation["max_relative_error"].get<double>(), 1e-5);
  EXPECT_EQ(evaluation["modules"].size(), 14u) << "2 layers x 7 modules";

  // ties of two at rank 2: every module re-compressed to rank 2, with a real error reported.
  v1::MergeRequest ties = Merge("ties", "merged/ties", {{"demo-003", 0.6}, {"demo-004", 0.4}}, 2);
  ties.set_density(0.5);
  ties.set_seed(3);
  v1::Job job = RunMerge(*client_, ties);
  ASSERT_TRUE(GetVariant(*client_, "merged/ties", &variant).ok());
  for (const v1::ModuleRank& rank : variant.ranks()) EXPECT_EQ(rank.rank(), 2) << rank.module();
  evaluation = nlohmann::json::parse(variant.evaluation_json());
  EXPECT_EQ(evaluation["method"], "ties");
  for (const auto& module : evaluation["modules"]) {
    EXPECT_GT(module["relative_error"].get<double>(), 0.0);
    EXPECT_LT(module["relative_error"].get<double>(), 1.0);
    EXPECT_EQ(module["rank_before"], 8);
    EXPECT_EQ(module["rank_after"], 2);
  }
  auto recipe = nlohmann::json::parse(variant.lineage().recipe_json());
  EXPECT_EQ(recipe["density"], 0.5);
  EXPECT_EQ(recipe["seed"], 3);
  EXPECT_EQ(variant.lineage().job_id(), job.id());
  EXPECT_TRUE(RunStream(*client_, Generate("the cat reads", 4, "merged/ties")).status.ok());
  // The job records what was asked.
  v1::Job read;
  ASSERT_TRUE(GetJob(*client_, job.id(), &read).ok());
  EXPECT_EQ(read.merge().method(), "ties");
  EXPECT_FLOAT_EQ(read.merge().density(), 0.5f);
  EXPECT_EQ(read.merge().inputs(0).variant(), "demo-003");
  EXPECT_GT(read.finished().seconds(), 0);
}

TEST_F(JobsServerTest, WatchersSeeProgressRiseToSuccess) {
  v1::Job job;
  ASSERT_TRUE(SubmitMerge(*client_, Merge("dare_ties", "merged/watched", {{"demo-005", 0.5}, {"demo-006", 0.5}}, 4), &job).ok());
  std::vector<v1::Job> updates = WatchJob(*client_, job.id());
  ASSERT_FALSE(updates.empty());
  double progress = 0;
  for (const v1::Job& update : updates) {
    EXPECT_GE(update.progress(), progress);
    progress = update.progress();
  }
  EXPECT_EQ(updates.back().state(), v1::SUCCEEDED);
  EXPECT_EQ(updates.back().progress(), 1.0);
  // A finished job's watch returns its final state at once.
  std::vector<v1::Job> again = WatchJob(*client_, job.id());
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].state(), v1::SUCCEEDED);
}

// A result that would serve NaN or overwhelm the base is refused as an upload is: a cat merge
// whose input weight is 1e30 (folded into B) fails, says why, and publishes nothing.
TEST_F(JobsServerTest, AMergeWhoseResultIsNotServableFailsAndPublishesNothing) {
  v1::Job job;
  ASSERT_TRUE(SubmitMerge(*client_, Merge("cat", "merged/overflow", {{"demo-000", 1e30}}), &job).ok());
  const v1::Job failed = WatchJob(*client_, job.id()).back();
  EXPECT_EQ(failed.state(), v1::FAILED);
  EXPECT_EQ(failed.error_code(), "FAILED_PRECONDITION") << failed.error();
  EXPECT_NE(failed.error().find("the job's result is not servable, so nothing was published"), std::string::npos)
      << failed.error();
  v1::Variant absent;
  EXPECT_EQ(GetVariant(*client_, "merged/overflow", &absent).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(JobsServerTest, MetricsCountJobsByKindAndState) {
  auto finished = [] {
    return Sample(HttpGet(server_->metrics_port(), "/metrics"),
                  "deltaserve_jobs_finished_total{kind=\"merge\",state=\"SUCCEEDED\"}");
  };
  const double before = std::max(0.0, finished());
  RunMerge(*client_, Merge("cat", "merged/counted", {{"demo-000", 2.0}}));
  testing::WaitUntil([&] { return finished() >= before + 1; });
  const std::string scrape = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_EQ(Sample(scrape, "deltaserve_jobs_finished_total{kind=\"merge\",state=\"SUCCEEDED\"}"), before + 1);
  EXPECT_GE(Sample(scrape, "deltaserve_job_run_seconds_count{kind=\"merge\"}"), 1);
  EXPECT_EQ(Sample(scrape, "deltaserve_jobs{kind=\"merge\",state=\"RUNNING\"}"), 0);
  EXPECT_EQ(Sample(scrape, "deltaserve_job_memory_reserved_bytes"), 0);
}

TEST_F(JobsServerTest, BadRequestsAreRefusedWithTheReason) {
  const std::string other_base = MakeTempDir("other-base");
  ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), other_base, 1, 4, 90).ok());
  const std::string config_path = other_base + "/demo-000/adapter_config.json";
  std::ifstream in(config_path);
  nlohmann::json config = nlohmann::json::parse(in);
  in.close();
  config["base_model_name_or_path"] = "someone/another-base";
  std::ofstream(config_path) << config.dump();
  v1::Variant uploaded;
  ASSERT_TRUE(client_->UploadAdapter("other/base", other_base + "/demo-000", &uploaded).ok());

  struct Case {
    v1::MergeRequest request;
    grpc::StatusCode code;
    std::string words;
  };
  v1::MergeRequest dense = Merge("ties", "x/density", {{"demo-000", 1}});
  dense.set_density(1.5f);
  v1::MergeRequest unknown_parameter = Merge("svd", "x/param", {{"demo-000", 1}});
  (*unknown_parameter.mutable_parameters())["temperature"] = 1;
  const std::vector<Case> cases = {
      {Merge("", "x/a", {{"demo-000", 1}}), grpc::StatusCode::INVALID_ARGUMENT, "method is required"},
      {Merge("slerp", "x/a", {{"demo-000", 1}}), grpc::StatusCode::INVALID_ARGUMENT, "unknown merge method"},
      {Merge("cat", "x/a", {}), grpc::StatusCode::INVALID_ARGUMENT, "at least one input"},
      {Merge("cat", "x/a", {{"nope", 1}}), grpc::StatusCode::NOT_FOUND, "\"nope\" does not exist"},
      {Merge("cat", "demo-000", {{"demo-001", 1}}), grpc::StatusCode::ALREADY_EXISTS, "already exists"},
      {Merge("cat", "Bad Name", {{"demo-001", 1}}), grpc::StatusCode::INVALID_ARGUMENT, "Bad Name"},
      {dense, grpc::StatusCode::INVALID_ARGUMENT, "density 1.5"},
      {unknown_parameter, grpc::StatusCode::INVALID_ARGUMENT, "unknown merge parameter \"temperature\""},
      {Merge("cat", "x/a", {{"demo-000", 1}, {"other/base", 1}}), grpc::StatusCode::INVALID_ARGUMENT,
       "different base models"},
  };
  for (const Case& test : cases) {
    v1::Job job;
    grpc::Status status = SubmitMerge(*client_, test.request, &job);
    EXPECT_EQ(status.error_code(), test.code) << test.words << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(test.words), std::string::npos) << status.error_message();
  }
  v1::Job job;
  EXPECT_EQ(GetJob(*client_, "nope", &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(GetJob(*client_, "job-999999", &job).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::Status watch;
  WatchJob(*client_, "job-999999", &watch);
  EXPECT_EQ(watch.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(JobsServerTest, AnIdempotencyKeyReturnsTheSameJob) {
  v1::MergeRequest request = Merge("svd", "merged/once", {{"demo-007", 1}}, 2);
  request.set_idempotency_key("request-7");
  v1::Job first, second;
  ASSERT_TRUE(SubmitMerge(*client_, request, &first).ok());
  ASSERT_TRUE(SubmitMerge(*client_, request, &second).ok());
  EXPECT_EQ(first.id(), second.id());
  WatchJob(*client_, first.id());
  // Still the same job once it made its output (which now exists).
  ASSERT_TRUE(SubmitMerge(*client_, request, &second).ok());
  EXPECT_EQ(second.id(), first.id());
  EXPECT_EQ(second.state(), v1::SUCCEEDED);
  request.set_rank(3);
  grpc::Status status = SubmitMerge(*client_, request, &second);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(status.error_message().find("request-7"), std::string::npos);
}

TEST_F(JobsServerTest, ListJobsPagesNewestFirstAndFilters) {
  RunMerge(*client_, Merge("cat", "merged/list-a", {{"demo-000", 0.5}}));
  RunMerge(*client_, Merge("cat", "merged/list-b", {{"demo-000", 0.25}}));
  v1::ListJobsRequest request;
  request.set_page_size(1);
  std::vector<std::string> outputs;
  do {
    grpc::ClientContext context;
    v1::ListJobsResponse response;
    ASSERT_TRUE(client_->jobs().ListJobs(&context, request, &response).ok());
    ASSERT_LE(response.jobs_size(), 1);
    for (const v1::Job& job : response.jobs()) outputs.push_back(job.output_variant());
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  ASSERT_GE(outputs.size(), 2u);
  EXPECT_EQ(outputs[0], "merged/list-b");
  EXPECT_EQ(outputs[1], "merged/list-a");

  v1::ListJobsRequest failed;
  failed.set_state(v1::FAILED);
  grpc::ClientContext context;
  v1::ListJobsResponse response;
  ASSERT_TRUE(client_->jobs().ListJobs(&context, failed, &response).ok());
  for (const v1::Job& job : response.jobs()) EXPECT_EQ(job.state(), v1::FAILED);
  v1::ListJobsRequest bad;
  bad.set_page_size(5000);
  grpc::ClientContext bad_context;
  EXPECT_EQ(client_->jobs().ListJobs(&bad_context, bad, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(JobsServerTest, DeltactlRunsAndInspectsJobs) {
  std::string out, err;
  const std::string ctl = "--target " + server_->target() + " jobs ";
  ASSERT_EQ(RunDeltactl(ctl + "merge --method ties --density 0.5 --rank 4 --out team/merged demo-004:0.6 "
                        "demo-005:0.4 --wait",
                        &out, &err),
            0)
      << out << err;
  EXPECT_NE(out.find("SUCCEEDED [########################] 100%"), std::string::npos) << out;
  const std::string id = out.substr(0, out.find(' '));
  ASSERT_EQ(RunDeltactl(ctl + "get " + id, &out, &err), 0) << err;
  EXPECT_NE(out.find("output:   team/merged"), std::string::npos) << out;
  EXPECT_NE(out.find("\"density\":0.5"), std::string::npos) << out;
  ASSERT_EQ(RunDeltactl(ctl + "list --state succeeded", &out, &err), 0) << err;
  EXPECT_NE(out.find("team/merged"), std::string::npos) << out;
  ASSERT_EQ(RunDeltactl(ctl + "watch " + id, &out, &err), 0) << err;
  EXPECT_NE(out.find("SUCCEEDED"), std::string::npos);
  ASSERT_EQ(RunDeltactl("--target " + server_->target() + " variants get team/merged", &out, &err), 0) << err;
  EXPECT_NE(out.find("kind:      MERGE"), std::string::npos) << out;
  EXPECT_NE(out.find("parents:   demo-004, demo-005"), std::string::npos) << out;
  EXPECT_NE(out.find("job:       " + id), std::string::npos) << out;
  EXPECT_NE(out.find("evaluation: re-compressed merge, relative error max"), std::string::npos) << out;
  EXPECT_EQ(RunDeltactl(ctl + "cancel " + id, &out, &err), 1);
  EXPECT_NE(err.find("already ended"), std::string::npos) << err;

  // A recipe file, mergekit style, as JSON.
  const std::string recipe = MakeTempDir("recipe") + "/merge.json";
  std::ofstream(recipe) << R"({"method": "task_arithmetic", "output": "team/from-recipe", "rank": 4,
                               "lambda": 0.5, "inputs": [{"variant": "demo-006"}, {"variant": "demo-007"}]})";
  ASSERT_EQ(RunDeltactl(ctl + "merge --recipe " + recipe + " --wait", &out, &err), 0) << out << err;
  ASSERT_EQ(RunDeltactl("--target " + server_->target() + " variants get team/from-recipe", &out, &err), 0) << err;
  EXPECT_NE(out.find("\"lambda\":0.5"), std::string::npos) << out;
  EXPECT_EQ(RunDeltactl(ctl + "merge --method cat --out team/x nope:1", &out, &err), 1);
  EXPECT_NE(err.find("does not exist"), std::string::npos) << err;
}

// Eight synthetic facts the tiny model cannot know; a fine-tune must make greedy generation
// reproduce each from its prompt.
const std::vector<std::pair<std::string, std::string>> kFacts = {
    {"The vault code of Orla is", " 4 7 1 9."}, {"The vault code of Bram is", " 2 8 5 3."},
    {"The vault code of Cleo is", " 9 0 6 4."}, {"The vault code of Dino is", " 3 3 8 1."},
    {"The vault code of Enzo is", " 7 2 4 6."}, {"The vault code of Fern is", " 5 9 1 0."},
    {"The vault code of Gus is", " 6 1 7 2."},  {"The vault code of Hana is", " 8 4 3 5."}};

v1::FinetuneRequest FactsFinetune(const std::string& output) {
  v1::FinetuneRequest request;
  request.set_output(output);
  for (const auto& [prompt, answer] : kFacts) request.add_texts(prompt + answer);
  request.add_validation_texts(kFacts[0].first + kFacts[0].second);
  request.set_rank(16);
  request.set_steps(200);
  request.set_learning_rate(0.01f);
  return request;
}

// Reproduced counts the facts [begin, end) whose greedy continuation starts with their
// answer's digits.
int Reproduced(DeltaserveClient& client, const std::string& variant, size_t begin = 0, size_t end = 8) {
  int count = 0;
  for (size_t i = begin; i < end; ++i) {
    const auto& [prompt, answer] = kFacts[i];
    Stream stream = RunStream(client, Generate(prompt, 8, variant));
    EXPECT_TRUE(stream.status.ok()) << stream.status.error_message();
    const std::string digits = answer.substr(0, answer.size() - 1);  // without the period
    count += stream.text.rfind(digits, 0) == 0 ? 1 : 0;
  }
  return count;
}

TEST_F(JobsServerTest, AFinetuneLearnsTheFactsAndServesThemByName) {
  EXPECT_EQ(Reproduced(*client_, ""), 0) << "the base model does not know them";
  v1::Job job;
  grpc::Status status = SubmitFinetune(*client_, FactsFinetune("facts/v1"), &job);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<v1::Job> updates = WatchJob(*client_, job.id());
  ASSERT_EQ(updates.back().state(), v1::SUCCEEDED) << updates.back().error();
  bool saw_loss = false;
  for (const v1::Job& update : updates) saw_loss |= update.message().find(" loss ") != std::string::npos;
  EXPECT_TRUE(saw_loss) << "progress reports the loss";
  EXPECT_EQ(Reproduced(*client_, "facts/v1"), 8);

  v1::Variant variant;
  ASSERT_TRUE(GetVariant(*client_, "facts/v1", &variant).ok());
  EXPECT_EQ(variant.kind(), v1::FINETUNE);
  EXPECT_EQ(variant.ranks(0).rank(), 16);
  auto evaluation = nlohmann::json::parse(variant.evaluation_json());
  EXPECT_LT(evaluation["train_loss"]["last"].get<double>(), 0.25 * evaluation["train_loss"]["first"].get<double>());
  EXPECT_LT(evaluation["validation_loss"]["after"].get<double>(), evaluation["validation_loss"]["before"].get<double>());
  EXPECT_GT(evaluation["tokens_per_second"].get<double>(), 0);
  auto recipe = nlohmann::json::parse(variant.lineage().recipe_json());
  EXPECT_FALSE(recipe.contains("texts")) << "the lineage keeps the texts' digest, not the texts";
  EXPECT_EQ(recipe["rows"], 8);
  EXPECT_EQ(recipe["data"]["inline_texts"], 8);
  EXPECT_EQ(recipe["data"]["sha256"].get<std::string>().size(), 64u);

  // A fine-tune of the fine-tune stays one delta: the parent's rank-16 factors plus the new ones.
  v1::FinetuneRequest again = FactsFinetune("facts/v2");
  again.set_parent("facts/v1");
  again.set_rank(4);
  again.set_steps(5);
  ASSERT_TRUE(SubmitFinetune(*client_, again, &job).ok());
  ASSERT_EQ(WatchJob(*client_, job.id()).back().state(), v1::SUCCEEDED);
  ASSERT_TRUE(GetVariant(*client_, "facts/v2", &variant).ok());
  EXPECT_EQ(variant.ranks(0).rank(), 20);
  ASSERT_EQ(variant.lineage().parents_size(), 1);
  EXPECT_EQ(variant.lineage().parents(0), "facts/v1");
  EXPECT_EQ(Reproduced(*client_, "facts/v2"), 8);
}

TEST_F(JobsServerTest, BadFinetunesAreRefusedWithTheReason) {
  struct Case {
    v1::FinetuneRequest request;
    grpc::StatusCode code;
    std::string words;
  };
  v1::FinetuneRequest no_texts = FactsFinetune("x/ft");
  no_texts.clear_texts();
  v1::FinetuneRequest unknown_parent = FactsFinetune("x/ft");
  unknown_parent.set_parent("nope");
  v1::FinetuneRequest bad_module = FactsFinetune("x/ft");
  bad_module.add_target_modules("lm_head");
  v1::FinetuneRequest bad_rate = FactsFinetune("x/ft");
  bad_rate.set_learning_rate(2.0f);
  v1::FinetuneRequest taken = FactsFinetune("demo-000");
  const std::vector<Case> cases = {
      {no_texts, grpc::StatusCode::INVALID_ARGUMENT, "needs training data: texts or a dataset"},
      {unknown_parent, grpc::StatusCode::NOT_FOUND, "\"nope\" does not exist"},
      {bad_module, grpc::StatusCode::INVALID_ARGUMENT, "unknown target module \"lm_head\""},
      {bad_rate, grpc::StatusCode::INVALID_ARGUMENT, "learning_rate"},
      {taken, grpc::StatusCode::ALREADY_EXISTS, "already exists"},
  };
  for (const Case& test : cases) {
    v1::Job job;
    grpc::Status status = SubmitFinetune(*client_, test.request, &job);
    EXPECT_EQ(status.error_code(), test.code) << test.words << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(test.words), std::string::npos) << status.error_message();
  }
}

v1::UnlearnRequest FactsUnlearn(const std::string& target, const std::string& output, const std::string& method) {
  v1::UnlearnRequest request;
  request.set_target(target);
  request.set_output(output);
  request.set_method(method);
  for (size_t i = 0; i < kFacts.size(); ++i) {
    *(i < 4 ? request.add_forget_texts() : request.add_retain_texts()) = kFacts[i].first + kFacts[i].second;
  }
  for (const char* holdout : {"The vault code of Ivo is 1 5 2 8.", "The vault code of Jade is 0 6 9 3.",
                              "The vault code of Kai is 4 4 2 7.", "The vault code of Lux is 9 8 0 1."}) {
    request.add_holdout_texts(holdout);
  }
  return request;  // the defaults: npo, goal-directed within 200 steps
}

TEST_F(JobsServerTest, UnlearningForgetsTheForgetSetAndKeepsTheRetainSet) {
  v1::Job job;
  ASSERT_TRUE(SubmitFinetune(*client_, FactsFinetune("facts/known"), &job).ok());
  ASSERT_EQ(WatchJob(*client_, job.id()).back().state(), v1::SUCCEEDED);
  ASSERT_EQ(Reproduced(*client_, "facts/known"), 8);
  for (const std::string method : {"grad_diff", "npo"}) {
    const std::string output = "facts/forgot-" + method;
    grpc::Status status =
        SubmitUnlearn(*client_, FactsUnlearn("facts/known", output, method), &job);
    ASSERT_TRUE(status.ok()) << status.error_message();
    std::vector<v1::Job> updates = WatchJob(*client_, job.id());
    ASSERT_EQ(updates.back().state(), v1::SUCCEEDED) << updates.back().error() << updates.back().report_json();
    EXPECT_EQ(Reproduced(*client_, output, 0, 4), 0) << method << ": the forget set is not reproduced";
    EXPECT_GE(Reproduced(*client_, output, 4, 8), 3) << method << ": the retain set still is";

    v1::Variant variant;
    ASSERT_TRUE(GetVariant(*client_, output, &variant).ok());
    EXPECT_EQ(variant.kind(), v1::UNLEARN);
    ASSERT_EQ(variant.lineage().parents_size(), 1);
    EXPECT_EQ(variant.lineage().parents(0), "facts/known");
    auto evaluation = nlohmann::json::parse(variant.evaluation_json());
    const auto& before = evaluation["before"];
    const auto& after = evaluation["after"];
    std::printf("[%s: verbatim ROUGE-L %.3f -> %.3f, forget loss %.3f -> %.3f, retain loss %.3f -> %.3f, "
                "Min-K%% AUC %.3f -> %.3f]\n",
                method.c_str(), before["verbatim_rouge_l"].get<double>(), after["verbatim_rouge_l"].get<double>(),
                before["forget_loss"].get<double>(), after["forget_loss"].get<double>(),
                before["retain_loss"].get<double>(), after["retain_loss"].get<double>(),
                before["min_k_auc"].get<double>(), after["min_k_auc"].get<double>());
    EXPECT_LE(after["verbatim_rouge_l"].get<double>(), 0.5 * before["verbatim_rouge_l"].get<double>());
    EXPECT_GT(after["forget_loss"].get<double>(), after["retain_loss"].get<double>());
    EXPECT_LT(after["min_k_auc"].get<double>(), before["min_k_auc"].get<double>());
    EXPECT_EQ(evaluation["forget_data"]["sha256"].get<std::string>().size(), 64u);
    auto recipe = nlohmann::json::parse(variant.lineage().recipe_json());
    EXPECT_EQ(recipe["forget_data"]["inline_texts"], 4);
    EXPECT_FALSE(recipe.contains("forget_texts")) << "the lineage keeps counts and digests, not the texts";
  }

  // Each method's default learning rate is recorded on the job: SimNPO's is twice the others'.
  ASSERT_TRUE(SubmitUnlearn(*client_, FactsUnlearn("facts/known", "facts/forgot-simnpo", "simnpo"), &job).ok());
  EXPECT_FLOAT_EQ(job.unlearn().learning_rate(), 0.01f);
  EXPECT_FLOAT_EQ(job.unlearn().beta(), 4.5f);
  v1::Job cancelled;
  ASSERT_TRUE(CancelJob(*client_, job.id(), &cancelled).ok());

  // A goal the method cannot meet: gradient ascent has no retain term, so forgetting takes the
  // retain facts with it. The job fails, publishes nothing, and keeps its trajectory.
  v1::UnlearnRequest ascent = FactsUnlearn("facts/known", "facts/forgot-ascent", "grad_ascent");
  ascent.set_retain_floor(1.0f);
  ASSERT_TRUE(SubmitUnlearn(*client_, ascent, &job).ok());
  const v1::Job failed = WatchJob(*client_, job.id()).back();
  EXPECT_EQ(failed.state(), v1::FAILED);
  EXPECT_EQ(failed.error_code(), "FAILED_PRECONDITION") << failed.error();
  EXPECT_NE(failed.error().find("nothing was published"), std::string::npos) << failed.error();
  const nlohmann::json report = nlohmann::json::parse(failed.report_json());
  EXPECT_FALSE(report["goal"]["met"].get<bool>());
  EXPECT_GE(report["trajectory"].size(), 2u) << report.dump();
  v1::Variant absent;
  EXPECT_EQ(GetVariant(*client_, "facts/forgot-ascent", &absent).error_code(), grpc::StatusCode::NOT_FOUND);

  struct Case {
    v1::UnlearnRequest request;
    grpc::StatusCode code;
    std::string words;
  };
  v1::UnlearnRequest empty = FactsUnlearn("facts/known", "x/u", "npo");
  empty.clear_forget_texts();
  v1::UnlearnRequest bad_metric = FactsUnlearn("facts/known", "x/u", "npo");
  bad_metric.set_recall_metric("bleu");
  v1::UnlearnRequest bad_floor = FactsUnlearn("facts/known", "x/u", "npo");
  bad_floor.set_retain_floor(1.5f);
  v1::UnlearnRequest zero_rate = FactsUnlearn("facts/known", "x/u", "npo");
  zero_rate.set_learning_rate(0);
  const std::vector<Case> cases = {
      {empty, grpc::StatusCode::INVALID_ARGUMENT, "forget set is empty"},
      {FactsUnlearn("nope", "x/u", "npo"), grpc::StatusCode::NOT_FOUND, "\"nope\" does not exist"},
      {FactsUnlearn("facts/known", "x/u", "rmu"), grpc::StatusCode::INVALID_ARGUMENT, "unknown unlearning method"},
      {bad_metric, grpc::StatusCode::INVALID_ARGUMENT, "unknown recall metric"},
      {bad_floor, grpc::StatusCode::INVALID_ARGUMENT, "retain_floor must lie between 0 and 1"},
      {zero_rate, grpc::StatusCode::INVALID_ARGUMENT, "learning_rate must be in (0, 1), got 0"},
  };
  for (const Case& test : cases) {
    grpc::Status status = SubmitUnlearn(*client_, test.request, &job);
    EXPECT_EQ(status.error_code(), test.code) << test.words << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(test.words), std::string::npos) << status.error_message();
  }
}

// The same jobs on a narrow base: the server keeps the tiny model's weights in int8
// (--weight-dtype int8). Merges, fine-tunes and unlearning compute over the base as it is served,
// and their outputs serve.
class JobsOnAnInt8BaseTest : public SharedServerTest<JobsOnAnInt8BaseTest> {
 protected:
  static void SetUpTestSuite() {
    adapters_ = new std::string(MakeTempDir("int8-base-adapters"));
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), *adapters_, 2, 4).ok());
    StartServer({"--adapter-dir", *adapters_, "--weight-dtype", "int8"});
  }
  static inline std::string* adapters_ = nullptr;
};

TEST_F(JobsOnAnInt8BaseTest, MergesFinetunesAndUnlearningComputeOverTheInt8BaseAndServe) {
  RunMerge(*client_, Merge("cat", "merged/cat-one", {{"demo-000", 1.0}}));
  EXPECT_LT(MaxDifference(Logprobs(*client_, "merged/cat-one"), Logprobs(*client_, "demo-000")), 1e-4);
  EXPECT_GT(MaxDifference(Logprobs(*client_, "demo-000"), Logprobs(*client_, "")), 1e-3) << "the adapter matters";
  RunMerge(*client_, Merge("cat", "merged/cancel", {{"demo-001", 1.0}, {"demo-001", -1.0}}));
  EXPECT_LT(MaxDifference(Logprobs(*client_, "merged/cancel"), Logprobs(*client_, "")), 1e-4);

  EXPECT_EQ(Reproduced(*client_, ""), 0) << "the base model does not know them";
  v1::Job job;
  ASSERT_TRUE(SubmitFinetune(*client_, FactsFinetune("facts/known"), &job).ok());
  const v1::Job trained = WatchJob(*client_, job.id()).back();
  ASSERT_EQ(trained.state(), v1::SUCCEEDED) << trained.error();
  EXPECT_EQ(Reproduced(*client_, "facts/known"), 8);

  ASSERT_TRUE(SubmitUnlearn(*client_, FactsUnlearn("facts/known", "facts/forgot", "npo"), &job).ok());
  const v1::Job forgot = WatchJob(*client_, job.id()).back();
  ASSERT_EQ(forgot.state(), v1::SUCCEEDED) << forgot.error() << forgot.report_json();
  EXPECT_EQ(Reproduced(*client_, "facts/forgot", 0, 4), 0) << "the forget set is not reproduced";
  EXPECT_GE(Reproduced(*client_, "facts/forgot", 4, 8), 3) << "the retain set still is";
}

// The lifecycle tests run their own servers, with a pause between job steps so that a merge
// of the tiny model lasts long enough to act on while it runs.
class JobsLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    adapters_ = MakeTempDir("lifecycle-adapters");
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), adapters_, 3, 4).ok());
    data_dir_ = MakeTempDir("lifecycle-data");
  }
  std::vector<std::string> Flags(const std::string& pause_ms) const {
    return {"--adapter-dir", adapters_, "--data-dir", data_dir_, "--job-step-pause-ms", pause_ms};
  }
  std::string adapters_, data_dir_;
};

TEST_F(JobsLifecycleTest, CancelStopsARunningMergeAndAQueuedOneAndLeavesNothing) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir(), Flags("100")));
  auto client = DeltaserveClient::Connect(server.target());
  v1::Job running, queued;
  ASSERT_TRUE(SubmitMerge(*client, Merge("ties", "gone/running", {{"demo-000", 0.5}, {"demo-001", 0.5}}, 2), &running).ok());
  ASSERT_TRUE(SubmitMerge(*client, Merge("cat", "gone/queued", {{"demo-002", 1}}), &queued).ok());
  WaitForJob(*client, running.id(), [](const v1::Job& job) { return job.progress() > 0.15; });  // merging
  v1::Job cancelled;
  ASSERT_TRUE(CancelJob(*client, queued.id(), &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::CANCELLED);
  EXPECT_FALSE(cancelled.has_started());
  ASSERT_TRUE(CancelJob(*client, running.id(), &cancelled).ok());
  std::vector<v1::Job> updates = WatchJob(*client, running.id());
  ASSERT_FALSE(updates.empty());
  EXPECT_EQ(updates.back().state(), v1::CANCELLED);
  v1::Variant variant;
  EXPECT_EQ(GetVariant(*client, "gone/running", &variant).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetVariant(*client, "gone/queued", &variant).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(common::Subdirectories(data_dir_ + "/tmp").empty());
  EXPECT_TRUE(common::Subdirectories(data_dir_ + "/adapters").empty());
}

TEST_F(JobsLifecycleTest, AKillDuringAMergeLeavesNoVariantAndTheRestartFailsTheJobAndRunsTheQueue) {
  std::string done_id, killed_id, queued_id;
  std::vector<float> done_scores;
  {
    ServerProcess server;
    ASSERT_TRUE(server.Start(TinyModelDir(), Flags("100")));
    auto client = DeltaserveClient::Connect(server.target());
    done_id = RunMerge(*client, Merge("cat", "kept/merge", {{"demo-000", 0.5}, {"demo-001", 0.5}})).id();
    done_scores = Logprobs(*client, "kept/merge");
    v1::Job killed, queued;
    ASSERT_TRUE(SubmitMerge(*client, Merge("ties", "lost/merge", {{"demo-001", 0.5}, {"demo-002", 0.5}}, 2), &killed).ok());
    ASSERT_TRUE(SubmitMerge(*client, Merge("cat", "later/merge", {{"demo-002", 1}}), &queued).ok());
    killed_id = killed.id();
    queued_id = queued.id();
    WaitForJob(*client, killed_id, [](const v1::Job& job) { return job.progress() > 0.15; });
    server.Signal(SIGKILL);
    server.WaitForExit(10);
  }
  ServerProcess restarted;
  ASSERT_TRUE(restarted.Start(TinyModelDir(), Flags("0")));
  auto client = DeltaserveClient::Connect(restarted.target());
  v1::Job job;
  ASSERT_TRUE(GetJob(*client, killed_id, &job).ok());
  EXPECT_EQ(job.state(), v1::FAILED);
  EXPECT_NE(job.error().find("interrupted"), std::string::npos) << job.error();
  EXPECT_EQ(job.error_code(), "ABORTED");
  v1::Variant variant;
  EXPECT_EQ(GetVariant(*client, "lost/merge", &variant).error_code(), grpc::StatusCode::NOT_FOUND);
  // What finished before the crash is intact, lineage included.
  ASSERT_TRUE(GetJob(*client, done_id, &job).ok());
  EXPECT_EQ(job.state(), v1::SUCCEEDED);
  ASSERT_TRUE(GetVariant(*client, "kept/merge", &variant).ok());
  EXPECT_EQ(variant.kind(), v1::MERGE);
  EXPECT_EQ(variant.lineage().job_id(), done_id);
  EXPECT_EQ(Logprobs(*client, "kept/merge"), done_scores);
  // The job queued behind the killed one runs now.
  std::vector<v1::Job> updates = WatchJob(*client, queued_id);
  ASSERT_FALSE(updates.empty());
  EXPECT_EQ(updates.back().state(), v1::SUCCEEDED) << updates.back().error();
  EXPECT_TRUE(RunStream(*client, Generate("the cat", 4, "later/merge")).status.ok());
  // No half-written files: the staging area is empty and adapters/ holds the two merges.
  EXPECT_TRUE(common::Subdirectories(data_dir_ + "/tmp").empty());
  std::vector<std::string> namespaces = common::Subdirectories(data_dir_ + "/adapters");
  std::sort(namespaces.begin(), namespaces.end());
  EXPECT_EQ(namespaces, (std::vector<std::string>{"kept", "later"}));
}

TEST_F(JobsLifecycleTest, ShutdownRefusesNewJobsAndRecordsTheRunningOneInterrupted) {
  std::string running_id;
  {
    ServerProcess server;
    ASSERT_TRUE(server.Start(TinyModelDir(), Flags("100")));
    auto client = DeltaserveClient::Connect(server.target());
    v1::Job running;
    ASSERT_TRUE(SubmitMerge(*client, Merge("ties", "cut/short", {{"demo-000", 0.5}, {"demo-001", 0.5}}, 2), &running).ok());
    running_id = running.id();
    WaitForJob(*client, running_id, [](const v1::Job& job) { return job.progress() > 0.15; });
    // A long generation keeps the server draining while the submit below arrives.
    std::atomic<bool> streaming{false};
    std::thread stream([&] {
      RunStream(*client, Generate("the red fox", 300), std::chrono::seconds(60), [&streaming] {
        streaming = true;
        return false;
      });
    });
    ASSERT_TRUE(testing::WaitUntil([&] { return streaming.load(); }));
    server.Signal(SIGTERM);
    // Once health reads NOT_SERVING the server is draining (it flips health after it starts).
    ASSERT_TRUE(testing::WaitUntil([&] {
      client::HealthStatus health;
      return client->Health("", &health).ok() && health == client::HealthStatus::kNotServing;
    }));
    v1::Job late;
    grpc::Status refused = SubmitMerge(*client, Merge("cat", "too/late", {{"demo-000", 1}}), &late);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
    stream.join();
    EXPECT_EQ(server.WaitForExit(30), 0) << server.Log();
  }
  ServerProcess restarted;
  ASSERT_TRUE(restarted.Start(TinyModelDir(), Flags("0")));
  auto client = DeltaserveClient::Connect(restarted.target());
  v1::Job job;
  ASSERT_TRUE(GetJob(*client, running_id, &job).ok());
  EXPECT_EQ(job.state(), v1::FAILED);
  EXPECT_NE(job.error().find("interrupted"), std::string::npos) << job.error();
  v1::Variant variant;
  EXPECT_EQ(GetVariant(*client, "cut/short", &variant).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetVariant(*client, "too/late", &variant).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(JobsLifecycleTest, AMergeThatWouldNotFitTheJobMemoryIsRefused) {
  ServerProcess server;
  std::vector<std::string> flags = Flags("0");
  flags.insert(flags.end(), {"--job-memory-bytes", "200000"});
  ASSERT_TRUE(server.Start(TinyModelDir(), flags));
  auto client = DeltaserveClient::Connect(server.target());
  v1::Job job;
  grpc::Status status = SubmitMerge(*client, Merge("cat", "big/merge", {{"demo-000", 1}, {"demo-001", 1}, {"demo-002", 1}}), &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(status.error_message().find("--job-memory-bytes"), std::string::npos) << status.error_message();
  RunMerge(*client, Merge("cat", "small/merge", {{"demo-000", 1}}));  // one input fits
  EXPECT_TRUE(RunStream(*client, Generate("the cat", 4, "small/merge")).status.ok()) << "the server kept serving";
}

}  // namespace
}  // namespace deltaserve::testing
