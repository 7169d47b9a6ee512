// CatalogStore: the variant catalog's durable rows in SQLite (DATA_DIR/catalog.db, WAL mode,
// synchronous=FULL so a committed row survives a crash). One row per variant: name, owner
// namespace, kind, state (READY, DELETING, BROKEN, ...), parents, the recipe that produced it
// (JSON), the job that did, the artifact directory with the sha256 of each file, size, rank
// summary, created time and an evaluation report (JSON) that jobs fill. One row per job: its
// number, kind, state, progress, message, error, output variant, the spec it runs (JSON), its
// idempotency key and times. One row per dataset: name, owner namespace, the sha256 of its
// JSONL file, row counts, size and created time. The schema is versioned with PRAGMA
// user_version (1: variants; 2: jobs added; 3: datasets and variant versions added). Thread-safe (one connection behind a mutex); every call
// is one short transaction.
//   ASSIGN_OR_RETURN(auto store, CatalogStore::Open(JoinPath(data_dir, "catalog.db")));
//   RETURN_IF_ERROR(store->InsertVariant(record));
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/control/job_types.h"

struct sqlite3;

namespace deltaserve::control {

struct VariantRecord {
  std::string name;
  std::string owner_namespace;  // "" for names without a namespace
  std::string kind = "ADAPTER";
  std::string state = "READY";
  std::vector<std::string> parents;
  std::string recipe_json = "{}";
  std::string job_id;
  std::string artifact_path;
  std::map<std::string, std::string> artifact_sha256;  // file name -> hex digest
  int64_t size_bytes = 0;
  std::string rank_summary;
  int64_t created_unix_nanos = 0;
  std::string evaluation_json = "{}";
  int64_t version = 1;  // 2 after the first replace_target of the name, ...
};

struct DatasetRecord {
  std::string name;
  std::string owner_namespace;
  std::string sha256;  // of the stored JSONL file
  int64_t rows = 0;
  int64_t text_rows = 0;               // {"text": ...}
  int64_t prompt_completion_rows = 0;  // {"prompt": ..., "completion": ...}
  int64_t size_bytes = 0;
  int64_t created_unix_nanos = 0;
};

struct JobRecord {
  int64_t number = 0;  // assigned by InsertJob; the API's id is "job-<number>"
  JobKind kind = JobKind::kMerge;    // stored by name (JobKindName)
  JobState state = JobState::kQueued;  // stored by name (JobStateName)
  double progress = 0.0;         // 0..1
  std::string message;           // what it is doing now, or did last
  std::string error;             // why it FAILED
  std::string error_code;        // the canonical code of `error`, e.g. "RESOURCE_EXHAUSTED"
  std::string output_variant;
  std::string spec_json = "{}";  // what it runs, as its kind defines
  std::string idempotency_key;   // "" = none
  int64_t memory_bytes = 0;      // what it reserves of the job memory budget
  int64_t created_unix_nanos = 0;
  int64_t started_unix_nanos = 0;   // 0 until RUNNING
  int64_t finished_unix_nanos = 0;  // 0 until it ends
  std::string report_json;          // "" until the job sets one (JobContext::SetReport)
};

class CatalogStore {
 public:
  static absl::StatusOr<std::unique_ptr<CatalogStore>> Open(const std::string& path);
  ~CatalogStore();
  CatalogStore(const CatalogStore&) = delete;
  CatalogStore& operator=(const CatalogStore&) = delete;

  // InsertVariant: ALREADY_EXISTS when the name has a row.
  absl::Status InsertVariant(const VariantRecord& record);
  // SetVariantState / SetEvaluation / DeleteVariant: NOT_FOUND when the name has no row.
  absl::Status SetVariantState(const std::string& name, const std::string& state);
  absl::Status SetEvaluation(const std::string& name, const std::string& evaluation_json);
  absl::Status DeleteVariant(const std::string& name);
  absl::StatusOr<VariantRecord> GetVariant(const std::string& name) const;
  // ListVariants returns every row in name order.
  absl::StatusOr<std::vector<VariantRecord>> ListVariants() const;
  // ReplaceVariant, in one transaction: renames `name`'s row to `previous_name` with state
  // `previous_state`, and inserts `replacement` (whose name is `name`). NOT_FOUND when `name`
  // has no row, ALREADY_EXISTS when `previous_name` has one; nothing changes then.
  absl::Status ReplaceVariant(const std::string& name, const std::string& previous_name,
                              const std::string& previous_state, const VariantRecord& replacement);

  // InsertDataset: ALREADY_EXISTS when the name has a row. DeleteDataset: NOT_FOUND when not.
  absl::Status InsertDataset(const DatasetRecord& record);
  absl::Status DeleteDataset(const std::string& name);
  // ListDatasets returns every dataset in name order.
  absl::StatusOr<std::vector<DatasetRecord>> ListDatasets() const;

  // InsertJob stores a new job and sets its number; ALREADY_EXISTS when another job has its
  // (non-empty) idempotency key.
  absl::Status InsertJob(JobRecord& record);
  // UpdateJob rewrites a job's row (all but number, kind, spec and key); NOT_FOUND if absent.
  absl::Status UpdateJob(const JobRecord& record);
  // ListJobs returns every job in number order; DATA_LOSS names a row whose kind or state this
  // version does not know.
  absl::StatusOr<std::vector<JobRecord>> ListJobs() const;

 private:
  explicit CatalogStore(sqlite3* database) : database_(database) {}
  absl::Status InsertVariantLocked(const VariantRecord& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::Status UpdateColumn(const char* column, const std::string& name, const std::string& value);

  mutable absl::Mutex mutex_;
  sqlite3* database_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace deltaserve::control
