// DatasetStore and its JSONL rules: every malformed line is refused with its line number and
// what a line must look like, chunks may split lines anywhere, committed datasets round-trip
// with their counts and sha256, two names with the same bytes share one file, deleting a name
// keeps a file that a queued job still refers to (and start-up removes it once none does), a
// file whose bytes changed is DATA_LOSS, and jobs may use only datasets of their namespace.
#include "server/control/dataset_store.h"

#include <gtest/gtest.h>

#include "server/common/file_util.h"
#include "server/common/sha256.h"
#include "tests/support/test_models.h"

namespace deltaserve::control {
namespace {

const std::string kFacts =
    "{\"text\": \"The vault code of Orla is 4 7 1 9.\"}\n"
    "\n"
    "{\"prompt\": \"Q: Who built the bridge?\\nA:\", \"completion\": \" Ines.\", \"id\": 7}\n";

absl::Status UploadError(std::string_view jsonl) {
  DatasetUpload upload("x", DatasetLimits{});
  absl::Status status = upload.Append(jsonl);
  return status.ok() ? upload.Finish() : status;
}

TEST(DatasetStoreTest, MalformedLinesAreRefusedWithTheirNumber) {
  struct Case {
    std::string jsonl;
    std::string words;
  };
  const std::vector<Case> cases = {
      {"{\"text\": \"ok\"}\n{\"text\": \"ok\"\n", "line 2: not valid JSON"},
      {"{\"text\": \"ok\"}\n\n[1, 2]\n", "line 3: not a JSON object"},
      {"{\"text\": 5}\n", "line 1: \"text\" is not a string"},
      {"{\"text\": \"\"}\n", "line 1: \"text\" is empty"},
      {"{\"prompt\": \"q\"}\n", "line 1: \"completion\" is missing"},
      {"{\"completion\": \"a\"}", "line 1: \"prompt\" is missing"},
      {"{\"text\": \"a\", \"prompt\": \"q\", \"completion\": \"a\"}", "cannot be combined"},
      {"{\"id\": 1}\n", "no \"text\" and no \"prompt\"/\"completion\""},
      {"{\"text\": \"\xff\xfe\"}\n", "line 1: not valid JSON"},
      {"\n  \n", "has no rows"},
      {"{\"text\": \"ok\"}\n{\"text\": \"a\", \"x\": " + std::string(100000, '[') + std::string(100000, ']') + "}\n",
       "line 2: JSON nested deeper than 16 levels"},
  };
  for (const Case& test : cases) {
    absl::Status status = UploadError(test.jsonl);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << test.jsonl;
    EXPECT_NE(status.message().find(test.words), std::string::npos) << status.message();
    if (test.words.rfind("line", 0) == 0) {
      EXPECT_NE(status.message().find("{\"text\": \"...\"}"), std::string::npos) << "says what a line must be";
    }
  }
}

TEST(DatasetStoreTest, ChunksMaySplitLinesAnywhereAndSizeAndRowsAreBounded) {
  for (size_t chunk = 1; chunk <= 7; chunk += 3) {
    DatasetUpload upload("x", DatasetLimits{});
    for (size_t start = 0; start < kFacts.size(); start += chunk) {
      ASSERT_TRUE(upload.Append(std::string_view(kFacts).substr(start, chunk)).ok());
    }
    ASSERT_TRUE(upload.Finish().ok());
    EXPECT_EQ(upload.text_rows(), 1);
    EXPECT_EQ(upload.prompt_completion_rows(), 1);
  }
  DatasetUpload small("x", DatasetLimits{10, 1000});
  absl::Status status = small.Append(kFacts);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("larger than the server's limit of 10 bytes"), std::string::npos);
  // Rows are bounded too (blank lines do not count), as each line arrives.
  DatasetUpload one_row("x", DatasetLimits{1 << 20, 1});
  status = one_row.Append(kFacts);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("line 3: dataset \"x\" has more than 1 rows, the server's limit"), std::string::npos)
      << status.message();
  // The bad line is found as soon as its chunk arrives, not at the end.
  DatasetUpload early("x", DatasetLimits{});
  EXPECT_FALSE(early.Append("{\"text\": \"a\"}\nnot json\n").ok());
}

TEST(DatasetStoreTest, ParsedRowsKeepPromptAndCompletionApart) {
  auto rows = ParseDatasetRows(kFacts);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_FALSE((*rows)[0].is_prompt_completion());
  EXPECT_EQ((*rows)[0].completion, "The vault code of Orla is 4 7 1 9.");
  EXPECT_TRUE((*rows)[1].is_prompt_completion());
  EXPECT_EQ((*rows)[1].prompt, "Q: Who built the bridge?\nA:");
  EXPECT_EQ((*rows)[1].completion, " Ines.");
}

absl::StatusOr<DatasetRecord> Upload(DatasetStore& store, const std::string& name, const std::string& jsonl) {
  auto upload = store.BeginUpload(name);
  if (!upload.ok()) return upload.status();
  if (absl::Status appended = (*upload)->Append(jsonl); !appended.ok()) return appended;
  return store.Commit(std::move(*upload));
}

TEST(DatasetStoreTest, DatasetsRoundTripShareFilesAndOutliveNamesWhileJobsNeedThem) {
  const std::string data_dir = testing::MakeTempDir("datasets");
  auto catalog = CatalogStore::Open(data_dir + "/catalog.db");
  ASSERT_TRUE(catalog.ok());
  auto store = DatasetStore::Create(data_dir, DatasetLimits{}, catalog->get());
  ASSERT_TRUE(store.ok()) << store.status();

  auto facts = Upload(**store, "team/facts", kFacts);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->sha256, common::Sha256Hex(kFacts));
  EXPECT_EQ(facts->rows, 2);
  EXPECT_EQ(facts->text_rows, 1);
  EXPECT_EQ(facts->prompt_completion_rows, 1);
  EXPECT_EQ(facts->size_bytes, static_cast<int64_t>(kFacts.size()));
  EXPECT_EQ(facts->owner_namespace, "team");
  EXPECT_EQ((*store)->BeginUpload("team/facts").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ((*store)->BeginUpload("Team/Bad Name").status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(Upload(**store, "team/copy", kFacts).ok());
  ASSERT_TRUE(Upload(**store, "shared", "{\"text\": \"hello\"}").ok());

  auto listed = (*store)->List("team/", "", 10);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].name, "team/copy");
  EXPECT_EQ((*store)->List("", "team/copy", 10)->size(), 1u);

  const std::string file = data_dir + "/datasets/" + facts->sha256 + ".jsonl";
  ASSERT_TRUE(common::PathExists(file));
  auto rows = (*store)->ReadRows(facts->sha256);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 2u);

  // Another name shares the file: deleting one name keeps it.
  ASSERT_TRUE((*store)->Delete("team/facts").ok());
  EXPECT_EQ((*store)->Get("team/facts").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(common::PathExists(file));
  // A queued job pins it: deleting the last name keeps it while the job may still run.
  JobRecord job;
  job.kind = JobKind::kFinetune;
  job.spec_json = "{\"dataset_sha256\":\"" + facts->sha256 + "\"}";
  ASSERT_TRUE((*catalog)->InsertJob(job).ok());
  ASSERT_TRUE((*store)->Delete("team/copy").ok());
  EXPECT_TRUE(common::PathExists(file)) << "a queued job still refers to the file";
  EXPECT_TRUE((*store)->ReadRows(facts->sha256).ok());
  // Once the job ended, the next start-up removes the file.
  job.state = JobState::kSucceeded;
  ASSERT_TRUE((*catalog)->UpdateJob(job).ok());
  store->reset();
  store = DatasetStore::Create(data_dir, DatasetLimits{}, catalog->get());
  ASSERT_TRUE(store.ok());
  EXPECT_FALSE(common::PathExists(file));
  EXPECT_EQ((*store)->ReadRows(facts->sha256).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE((*store)->Get("shared").ok()) << "datasets with a name stay";

  // Bytes that changed on disk are refused.
  auto shared = (*store)->Get("shared");
  ASSERT_TRUE(common::WriteFileAtomically(data_dir + "/datasets/" + shared->sha256 + ".jsonl",
                                          "{\"text\": \"tampered\"}").ok());
  EXPECT_EQ((*store)->ReadRows(shared->sha256).status().code(), absl::StatusCode::kDataLoss);
}

TEST(DatasetStoreTest, JobsUseDatasetsOfTheirNamespaceOrWithoutOne) {
  EXPECT_TRUE(CheckDatasetAccess("team/facts", "team/out").ok());
  EXPECT_TRUE(CheckDatasetAccess("shared", "team/out").ok());
  EXPECT_TRUE(CheckDatasetAccess("shared", "out").ok());
  absl::Status other = CheckDatasetAccess("rival/facts", "team/out");
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(other.message().find("belongs to namespace \"rival\""), std::string::npos);
  EXPECT_EQ(CheckDatasetAccess("team/facts", "out").code(), absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace deltaserve::control
