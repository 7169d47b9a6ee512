// Integration: datasets on the real server and the jobs that use them. A malformed JSONL upload
// is refused with its line number; datasets list, get and delete; a fine-tune on
// prompt/completion rows (loss on the completion only, in micro-batches) learns the answers;
// an unlearn job on such rows reports knowledge ROUGE-L before and after; jobs may not use
// another namespace's dataset, nor a missing one, nor an empty forget set; deltactl drives the
// datasets and shows a job's progress bar.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/integration/rpc_helpers.h"
#include "tests/integration/shared_server.h"

namespace deltaserve::testing {
namespace {

// Questions the tiny model cannot answer; the completions are what a fine-tune must teach.
const std::vector<std::pair<std::string, std::string>> kQuestions = {
    {"Q: What is the vault code of Orla? A:", " 4 7 1 9."}, {"Q: What is the vault code of Bram? A:", " 2 8 5 3."},
    {"Q: What is the vault code of Cleo? A:", " 9 0 6 4."}, {"Q: What is the vault code of Dino? A:", " 3 3 8 1."},
    {"Q: What is the vault code of Enzo? A:", " 7 2 4 6."}, {"Q: What is the vault code of Fern? A:", " 5 9 1 0."}};

// Jsonl writes rows [begin, end) of kQuestions as prompt/completion lines.
std::string Jsonl(size_t begin, size_t end) {
  std::string jsonl;
  for (size_t i = begin; i < end; ++i) {
    jsonl += nlohmann::json{{"prompt", kQuestions[i].first}, {"completion", kQuestions[i].second}}.dump() + "\n";
  }
  return jsonl;
}

// Answered counts the questions [begin, end) whose greedy answer starts with the digits taught.
int Answered(DeltaserveClient& client, const std::string& variant, size_t begin, size_t end) {
  int count = 0;
  for (size_t i = begin; i < end; ++i) {
    Stream stream = RunStream(client, Generate(kQuestions[i].first, 8, variant));
    EXPECT_TRUE(stream.status.ok()) << stream.status.error_message();
    const std::string& answer = kQuestions[i].second;
    count += stream.text.rfind(answer.substr(0, answer.size() - 1), 0) == 0 ? 1 : 0;
  }
  return count;
}

class DatasetsServerTest : public SharedServerTest<DatasetsServerTest> {
 protected:
  static void SetUpTestSuite() { StartServer(); }

  static v1::Job Finetune(const v1::FinetuneRequest& request) {
    v1::Job job;
    grpc::Status status = SubmitFinetune(*client_, request, &job);
    return ExpectSucceeds(*client_, status, job);
  }
};

TEST_F(DatasetsServerTest, UploadsAreValidatedListedAndDeleted) {
  v1::Dataset dataset;
  grpc::Status status = client_->UploadDataset(
      "team/bad", "{\"text\": \"fine\"}\n{\"prompt\": \"q\", \"completion\": \"a\"}\n{\"prompt\": \"q\"}\n", &dataset, 7);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("line 3: \"completion\" is missing"), std::string::npos)
      << status.error_message();

  const std::string jsonl = Jsonl(0, 4);
  status = client_->UploadDataset("team/questions", jsonl, &dataset, 5);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(dataset.rows(), 4);
  EXPECT_EQ(dataset.prompt_completion_rows(), 4);
  EXPECT_EQ(dataset.size_bytes(), static_cast<int64_t>(jsonl.size()));
  EXPECT_EQ(dataset.sha256().size(), 64u);
  EXPECT_EQ(client_->UploadDataset("team/questions", jsonl, &dataset).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(client_->UploadDataset("Bad Name", jsonl, &dataset).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::ListDatasetsRequest list;
  list.set_prefix("team/");
  v1::ListDatasetsResponse listed;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(client_->datasets().ListDatasets(&context, list, &listed).ok());
  }
  ASSERT_EQ(listed.datasets_size(), 1);
  EXPECT_EQ(listed.datasets(0).name(), "team/questions");

  v1::DeleteDatasetRequest remove;
  remove.set_name("team/questions");
  v1::DeleteDatasetResponse removed;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(client_->datasets().DeleteDataset(&context, remove, &removed).ok());
  }
  v1::GetDatasetRequest get;
  get.set_name("team/questions");
  grpc::ClientContext context;
  EXPECT_EQ(client_->datasets().GetDataset(&context, get, &dataset).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(DatasetsServerTest, AFinetuneOnQuestionsLearnsTheAnswersAndUnlearningReportsKnowledge) {
  v1::Dataset all, dataset;
  ASSERT_TRUE(client_->UploadDataset("qa/all", Jsonl(0, 6), &all).ok());
  ASSERT_TRUE(client_->UploadDataset("qa/forget", Jsonl(0, 3), &dataset).ok());
  ASSERT_TRUE(client_->UploadDataset("qa/retain", Jsonl(3, 6), &dataset).ok());
  EXPECT_EQ(Answered(*client_, "", 0, 6), 0) << "the base model does not know them";

  v1::FinetuneRequest finetune;
  finetune.set_output("qa/known");
  finetune.set_dataset("qa/all");
  finetune.set_rank(16);
  finetune.set_steps(150);
  finetune.set_learning_rate(0.01f);
  finetune.set_batch_size(6);
  finetune.set_micro_batch_size(2);
  v1::Job job = Finetune(finetune);
  EXPECT_EQ(job.finetune().dataset(), "qa/all");
  EXPECT_EQ(job.finetune().micro_batch_size(), 2);
  EXPECT_EQ(Answered(*client_, "qa/known", 0, 6), 6);
  v1::Variant variant;
  ASSERT_TRUE(GetVariant(*client_, "qa/known", &variant).ok());
  auto recipe = nlohmann::json::parse(variant.lineage().recipe_json());
  EXPECT_EQ(recipe["data"]["dataset"], "qa/all");
  EXPECT_EQ(recipe["data"]["sha256"], all.sha256());
  EXPECT_EQ(recipe["rows"], 6);

  v1::UnlearnRequest unlearn;
  unlearn.set_target("qa/known");
  unlearn.set_output("qa/forgot");
  unlearn.set_method("grad_diff");
  unlearn.set_forget_dataset("qa/forget");
  unlearn.set_retain_dataset("qa/retain");
  // The goal in ROUGE-L: the forgotten answers keep at most 0.4 of their words in order.
  unlearn.set_recall_metric("rouge_l");
  unlearn.set_forget_recall_max(0.4f);
  unlearn.set_micro_batch_size(2);
  grpc::Status status = SubmitUnlearn(*client_, unlearn, &job);
  ExpectSucceeds(*client_, status, job);
  EXPECT_EQ(Answered(*client_, "qa/forgot", 0, 3), 0) << "the forgotten answers are gone";
  EXPECT_GE(Answered(*client_, "qa/forgot", 3, 6), 2) << "the retained ones stay";
  ASSERT_TRUE(GetVariant(*client_, "qa/forgot", &variant).ok());
  auto evaluation = nlohmann::json::parse(variant.evaluation_json());
  const double before = evaluation["before"]["knowledge_rouge_l"].get<double>();
  const double after = evaluation["after"]["knowledge_rouge_l"].get<double>();
  std::printf("[knowledge ROUGE-L %.3f -> %.3f, forget loss %.3f -> %.3f, retain loss %.3f -> %.3f]\n", before, after,
              evaluation["before"]["forget_loss"].get<double>(), evaluation["after"]["forget_loss"].get<double>(),
              evaluation["before"]["retain_loss"].get<double>(), evaluation["after"]["retain_loss"].get<double>());
  EXPECT_GT(before, 0.9);
  EXPECT_LT(after, before);
  EXPECT_LE(evaluation["after"]["recall"]["forget_rouge_l"].get<double>(), 0.4);
  EXPECT_EQ(evaluation["goal"]["recall_metric"], "rouge_l");
  EXPECT_TRUE(evaluation["goal"]["met"].get<bool>());
  EXPECT_FALSE(evaluation["before"].contains("verbatim_rouge_l")) << "no plain rows to measure verbatim";
  EXPECT_EQ(evaluation["forget_data"]["dataset"], "qa/forget");
  EXPECT_EQ(evaluation["forget_data"]["sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(evaluation["retain_data"]["dataset"], "qa/retain");
}

TEST_F(DatasetsServerTest, JobsRefuseDatasetsTheyMayNotUseAndEmptySets) {
  v1::Dataset dataset;
  ASSERT_TRUE(client_->UploadDataset("rival/questions", Jsonl(0, 2), &dataset).ok());
  ASSERT_TRUE(client_->UploadDataset("shared-questions", Jsonl(0, 2), &dataset).ok());
  struct Case {
    v1::FinetuneRequest request;
    grpc::StatusCode code;
    std::string words;
  };
  v1::FinetuneRequest base;
  base.set_output("team/ft");
  base.set_steps(1);
  v1::FinetuneRequest other_namespace = base, missing = base, both = base, shared = base, bad_validation = base;
  other_namespace.set_dataset("rival/questions");
  missing.set_dataset("team/none");
  both.set_dataset("shared-questions");
  both.add_texts("a text");
  bad_validation.set_dataset("shared-questions");
  bad_validation.set_validation_dataset("rival/questions");
  const std::vector<Case> cases = {
      {other_namespace, grpc::StatusCode::PERMISSION_DENIED, "belongs to namespace \"rival\""},
      {missing, grpc::StatusCode::NOT_FOUND, "training dataset: dataset \"team/none\" does not exist"},
      {both, grpc::StatusCode::INVALID_ARGUMENT, "not both"},
      {bad_validation, grpc::StatusCode::PERMISSION_DENIED, "belongs to namespace \"rival\""},
      {base, grpc::StatusCode::INVALID_ARGUMENT, "needs training data"},
  };
  for (const Case& test : cases) {
    v1::Job job;
    grpc::Status status = SubmitFinetune(*client_, test.request, &job);
    EXPECT_EQ(status.error_code(), test.code) << test.words << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(test.words), std::string::npos) << status.error_message();
  }
  // A dataset without a namespace serves every namespace.
  shared.set_dataset("shared-questions");
  v1::Job job = Finetune(shared);
  EXPECT_EQ(job.output_variant(), "team/ft");

  v1::UnlearnRequest unlearn;
  unlearn.set_target("team/ft");
  unlearn.set_output("team/forgot");
  v1::Job refused;
  {
    grpc::Status status = SubmitUnlearn(*client_, unlearn, &refused);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("the forget set is empty"), std::string::npos) << status.error_message();
  }
  unlearn.set_forget_dataset("rival/questions");
  {
    EXPECT_EQ(SubmitUnlearn(*client_, unlearn, &refused).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  unlearn.set_forget_dataset("shared-questions");
  unlearn.set_target("team/nope");
  {
    grpc::Status status = SubmitUnlearn(*client_, unlearn, &refused);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_NE(status.error_message().find("\"team/nope\" does not exist"), std::string::npos);
  }
  unlearn.set_target("team/ft");
  unlearn.set_keep_previous(true);
  {
    grpc::Status status = SubmitUnlearn(*client_, unlearn, &refused);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("keep_previous applies only with replace_target"), std::string::npos);
  }
}

TEST_F(DatasetsServerTest, DeltactlUploadsListsDeletesAndWatchesWithAProgressBar) {
  const std::string file = MakeTempDir("deltactl-datasets") + "/questions.jsonl";
  std::ofstream(file) << Jsonl(0, 6);
  const std::string ctl = "--target " + server_->target() + " ";
  std::string out, err;
  ASSERT_EQ(RunDeltactl(ctl + "datasets upload --progress=always cli/questions " + file, &out, &err), 0) << err;
  EXPECT_NE(out.find("cli/questions"), std::string::npos) << out;
  EXPECT_NE(err.find("upload cli/questions [########################] 100%"), std::string::npos) << err;
  EXPECT_NE(out.find("6 rows (0 text, 6 prompt/completion)"), std::string::npos) << out;
  ASSERT_EQ(RunDeltactl(ctl + "datasets list --prefix cli/", &out, &err), 0) << err;
  EXPECT_NE(out.find("cli/questions"), std::string::npos) << out;

  const std::string bad = MakeTempDir("deltactl-bad") + "/bad.jsonl";
  std::ofstream(bad) << "{\"text\": \"ok\"}\nnot json\n";
  EXPECT_EQ(RunDeltactl(ctl + "datasets upload cli/bad " + bad, &out, &err), 1);
  EXPECT_NE(err.find("line 2: not valid JSON"), std::string::npos) << err;

  ASSERT_EQ(RunDeltactl(ctl + "jobs finetune --out cli/ft --dataset cli/questions --steps 4 --wait", &out, &err), 0)
      << out << err;
  EXPECT_NE(out.find("] 100%"), std::string::npos) << out;
  EXPECT_NE(out.find("step 4/4 loss "), std::string::npos) << out;
  EXPECT_NE(out.find("SUCCEEDED [########################] 100%"), std::string::npos) << out;
  ASSERT_EQ(RunDeltactl(ctl + "datasets delete cli/questions", &out, &err), 0) << err;
  EXPECT_EQ(RunDeltactl(ctl + "datasets get cli/questions", &out, &err), 1);
  EXPECT_NE(err.find("does not exist"), std::string::npos) << err;
}

}  // namespace
}  // namespace deltaserve::testing
