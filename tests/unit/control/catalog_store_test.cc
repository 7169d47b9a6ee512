// CatalogStore on a real SQLite file: variant, job and dataset rows round-trip with every
// field, names and idempotency keys are unique, updates and deletes report missing rows, rows
// survive closing and reopening, a replace switches a name in one transaction, and an older
// schema upgrades in place.
#include "server/control/catalog_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "server/common/file_util.h"
#include "tests/support/test_models.h"

namespace deltaserve::control {
namespace {

VariantRecord Record(const std::string& name) {
  VariantRecord record;
  record.name = name;
  record.owner_namespace = "team";
  record.kind = "MERGE";
  record.parents = {"team/a", "team/b"};
  record.recipe_json = R"({"method":"ties","density":0.5})";
  record.job_id = "job-7";
  record.artifact_path = "/data/adapters/" + name;
  record.artifact_sha256 = {{"adapter_config.json", "ab12"}, {"adapter_model.safetensors", "cd34"}};
  record.size_bytes = 123456;
  record.rank_summary = "q_proj:16";
  record.created_unix_nanos = 1795435261000000001;
  return record;
}

TEST(CatalogStoreTest, RowsRoundTripAndSurviveReopening) {
  const std::string path = testing::MakeTempDir("catalog") + "/catalog.db";
  {
    auto store = CatalogStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->InsertVariant(Record("team/merged")).ok());
    ASSERT_TRUE((*store)->InsertVariant(Record("team/another")).ok());
    EXPECT_EQ((*store)->InsertVariant(Record("team/merged")).code(), absl::StatusCode::kAlreadyExists);
    EXPECT_TRUE(common::PathExists(path + "-wal")) << "the catalog runs in WAL mode";
    ASSERT_TRUE((*store)->SetVariantState("team/merged", "DELETING").ok());
    ASSERT_TRUE((*store)->SetEvaluation("team/merged", R"({"svd_error":0.01})").ok());
    EXPECT_EQ((*store)->SetVariantState("nope", "READY").code(), absl::StatusCode::kNotFound);
    EXPECT_EQ((*store)->DeleteVariant("nope").code(), absl::StatusCode::kNotFound);
  }
  auto reopened = CatalogStore::Open(path);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto record = (*reopened)->GetVariant("team/merged");
  ASSERT_TRUE(record.ok()) << record.status();
  const VariantRecord expected = Record("team/merged");
  EXPECT_EQ(record->owner_namespace, expected.owner_namespace);
  EXPECT_EQ(record->kind, "MERGE");
  EXPECT_EQ(record->state, "DELETING");
  EXPECT_EQ(record->parents, expected.parents);
  EXPECT_EQ(record->recipe_json, expected.recipe_json);
  EXPECT_EQ(record->job_id, "job-7");
  EXPECT_EQ(record->artifact_path, expected.artifact_path);
  EXPECT_EQ(record->artifact_sha256, expected.artifact_sha256);
  EXPECT_EQ(record->size_bytes, 123456);
  EXPECT_EQ(record->rank_summary, "q_proj:16");
  EXPECT_EQ(record->created_unix_nanos, expected.created_unix_nanos);
  EXPECT_EQ(record->evaluation_json, R"({"svd_error":0.01})");

  auto all = (*reopened)->ListVariants();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].name, "team/another");  // name order
  ASSERT_TRUE((*reopened)->DeleteVariant("team/another").ok());
  EXPECT_EQ((*reopened)->GetVariant("team/another").status().code(), absl::StatusCode::kNotFound);
}

TEST(CatalogStoreTest, JobRowsRoundTripWithUniqueKeysAndSurviveReopening) {
  const std::string path = testing::MakeTempDir("catalog-jobs") + "/catalog.db";
  JobRecord first;
  {
    auto store = CatalogStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    first.kind = JobKind::kEdit;
    first.spec_json = R"({"method":"cat"})";
    first.output_variant = "team/out";
    first.idempotency_key = "k1";
    first.memory_bytes = 4096;
    first.created_unix_nanos = 1795435261000000001;
    ASSERT_TRUE((*store)->InsertJob(first).ok());
    EXPECT_GT(first.number, 0);
    JobRecord same_key = first;
    EXPECT_EQ((*store)->InsertJob(same_key).code(), absl::StatusCode::kAlreadyExists);
    JobRecord no_key = first;
    no_key.idempotency_key = "";
    JobRecord another_no_key = no_key;
    ASSERT_TRUE((*store)->InsertJob(no_key).ok());
    ASSERT_TRUE((*store)->InsertJob(another_no_key).ok()) << "empty keys never collide";
    EXPECT_GT(another_no_key.number, no_key.number);

    first.state = JobState::kFailed;
    first.progress = 0.5;
    first.message = "failed";
    first.error = "out of memory";
    first.error_code = "RESOURCE_EXHAUSTED";
    first.started_unix_nanos = first.created_unix_nanos + 1;
    first.finished_unix_nanos = first.created_unix_nanos + 2;
    ASSERT_TRUE((*store)->UpdateJob(first).ok());
    JobRecord missing;
    missing.number = 999;
    EXPECT_EQ((*store)->UpdateJob(missing).code(), absl::StatusCode::kNotFound);
  }
  auto reopened = CatalogStore::Open(path);
  ASSERT_TRUE(reopened.ok());
  auto jobs = (*reopened)->ListJobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 3u);
  const JobRecord& read = (*jobs)[0];
  EXPECT_EQ(read.number, first.number);
  EXPECT_EQ(read.kind, JobKind::kEdit);
  EXPECT_EQ(read.state, JobState::kFailed);
  EXPECT_DOUBLE_EQ(read.progress, 0.5);
  EXPECT_EQ(read.message, "failed");
  EXPECT_EQ(read.error, "out of memory");
  EXPECT_EQ(read.error_code, "RESOURCE_EXHAUSTED");
  EXPECT_EQ(read.output_variant, "team/out");
  EXPECT_EQ(read.spec_json, first.spec_json);
  EXPECT_EQ(read.idempotency_key, "k1");
  EXPECT_EQ(read.memory_bytes, 4096);
  EXPECT_EQ(read.created_unix_nanos, first.created_unix_nanos);
  EXPECT_EQ(read.started_unix_nanos, first.started_unix_nanos);
  EXPECT_EQ(read.finished_unix_nanos, first.finished_unix_nanos);
}

TEST(CatalogStoreTest, KindsAndStatesAreStoredByNameAndUnknownNamesAreRefused) {
  const std::string path = testing::MakeTempDir("catalog-job-names") + "/catalog.db";
  {
    auto store = CatalogStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    JobRecord job;
    job.kind = JobKind::kStats;
    job.state = JobState::kCancelled;
    ASSERT_TRUE((*store)->InsertJob(job).ok());
  }
  sqlite3* database = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &database), SQLITE_OK);
  auto column = [&](const char* sql) {
    sqlite3_stmt* statement = nullptr;
    std::string text;
    if (sqlite3_prepare_v2(database, sql, -1, &statement, nullptr) == SQLITE_OK && sqlite3_step(statement) == SQLITE_ROW) {
      text = reinterpret_cast<const char*>(sqlite3_column_text(statement, 0));
    }
    sqlite3_finalize(statement);
    return text;
  };
  EXPECT_EQ(column("SELECT kind || '/' || state FROM jobs"), "STATS/CANCELLED");
  // A kind a later version added: this version says which row, instead of guessing.
  ASSERT_EQ(sqlite3_exec(database, "UPDATE jobs SET kind = 'DISTILL'", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(database);
  auto store = CatalogStore::Open(path);
  ASSERT_TRUE(store.ok());
  auto jobs = (*store)->ListJobs();
  EXPECT_EQ(jobs.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(jobs.status().message().find("kind \"DISTILL\""), std::string::npos) << jobs.status();
}

TEST(CatalogStoreTest, ReplaceVariantSwitchesTheNameInOneTransaction) {
  auto store = CatalogStore::Open(testing::MakeTempDir("catalog-replace") + "/catalog.db");
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->InsertVariant(Record("team/bot")).ok());
  VariantRecord next = Record("team/bot");
  next.kind = "UNLEARN";
  next.artifact_path = "/data/adapters/team/bot@2";
  next.version = 2;
  ASSERT_TRUE((*store)->ReplaceVariant("team/bot", "team/bot@1", "READY", next).ok());
  auto current = (*store)->GetVariant("team/bot");
  ASSERT_TRUE(current.ok());
  EXPECT_EQ(current->version, 2);
  EXPECT_EQ(current->kind, "UNLEARN");
  EXPECT_EQ(current->artifact_path, "/data/adapters/team/bot@2");
  auto previous = (*store)->GetVariant("team/bot@1");
  ASSERT_TRUE(previous.ok());
  EXPECT_EQ(previous->version, 1);
  EXPECT_EQ(previous->artifact_path, "/data/adapters/team/bot");

  // A second switch whose previous name is taken changes nothing.
  VariantRecord third = next;
  third.version = 3;
  EXPECT_EQ((*store)->ReplaceVariant("team/bot", "team/bot@1", "DELETING", third).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ((*store)->GetVariant("team/bot")->version, 2);
  EXPECT_EQ((*store)->GetVariant("team/bot@1")->state, "READY");
  EXPECT_EQ((*store)->ReplaceVariant("team/none", "team/none@1", "DELETING", third).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ((*store)->ListVariants()->size(), 2u);
}

TEST(CatalogStoreTest, DatasetRowsRoundTrip) {
  const std::string path = testing::MakeTempDir("catalog-datasets") + "/catalog.db";
  DatasetRecord record;
  record.name = "team/facts";
  record.owner_namespace = "team";
  record.sha256 = std::string(64, 'a');
  record.rows = 5;
  record.text_rows = 2;
  record.prompt_completion_rows = 3;
  record.size_bytes = 321;
  record.created_unix_nanos = 1795435261000000001;
  {
    auto store = CatalogStore::Open(path);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->InsertDataset(record).ok());
    EXPECT_EQ((*store)->InsertDataset(record).code(), absl::StatusCode::kAlreadyExists);
  }
  auto store = CatalogStore::Open(path);
  ASSERT_TRUE(store.ok());
  auto all = (*store)->ListDatasets();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  const DatasetRecord& read = (*all)[0];
  EXPECT_EQ(read.name, record.name);
  EXPECT_EQ(read.owner_namespace, "team");
  EXPECT_EQ(read.sha256, record.sha256);
  EXPECT_EQ(read.rows, 5);
  EXPECT_EQ(read.text_rows, 2);
  EXPECT_EQ(read.prompt_completion_rows, 3);
  EXPECT_EQ(read.size_bytes, 321);
  EXPECT_EQ(read.created_unix_nanos, record.created_unix_nanos);
  ASSERT_TRUE((*store)->DeleteDataset("team/facts").ok());
  EXPECT_EQ((*store)->DeleteDataset("team/facts").code(), absl::StatusCode::kNotFound);
}

TEST(CatalogStoreTest, AVersionTwoCatalogUpgradesWithItsVariantsAtVersionOne) {
  const std::string path = testing::MakeTempDir("catalog-upgrade") + "/catalog.db";
  sqlite3* database = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &database), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(database,
                         "CREATE TABLE variants (name TEXT PRIMARY KEY, owner_namespace TEXT NOT NULL, kind TEXT NOT "
                         "NULL, state TEXT NOT NULL, parents_json TEXT NOT NULL, recipe_json TEXT NOT NULL, job_id TEXT "
                         "NOT NULL, artifact_path TEXT NOT NULL, artifact_sha256_json TEXT NOT NULL, size_bytes INTEGER "
                         "NOT NULL, rank_summary TEXT NOT NULL, created_unix_nanos INTEGER NOT NULL, evaluation_json "
                         "TEXT NOT NULL);"
                         "INSERT INTO variants VALUES ('old', '', 'ADAPTER', 'READY', '[]', '{}', '', '/a/old', '{}', 1, "
                         "'', 5, '{}');"
                         "PRAGMA user_version=2;",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(database);
  auto store = CatalogStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  auto old = (*store)->GetVariant("old");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->version, 1);
  EXPECT_TRUE((*store)->ListDatasets().ok()) << "the datasets table was added";
}

TEST(CatalogStoreTest, AnUnusableFileIsAnError) {
  const std::string directory = testing::MakeTempDir("catalog-bad");
  EXPECT_FALSE(CatalogStore::Open(directory).ok()) << "a directory is not a database";
  const std::string garbage = directory + "/garbage.db";
  ASSERT_TRUE(common::WriteFileAtomically(garbage, std::string(4096, 'x')).ok());
  EXPECT_FALSE(CatalogStore::Open(garbage).ok());
}

}  // namespace
}  // namespace deltaserve::control
