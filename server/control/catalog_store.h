// CatalogStore: the variant catalog's durable rows in SQLite (DATA_DIR/catalog.db, WAL mode,
// synchronous=FULL so a committed row survives a crash). One row per variant: name, owner
// namespace, kind, state (READY, DELETING, BROKEN, ...), parents, the recipe that produced it
// (JSON), the job that did, the artifact directory with the sha256 of each file, size, rank
// summary, created time and an evaluation report (JSON) that jobs fill. The schema is
// versioned with PRAGMA user_version. Thread-safe (one connection behind a mutex); every call
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

 private:
  explicit CatalogStore(sqlite3* database) : database_(database) {}
  absl::Status UpdateColumn(const char* column, const std::string& name, const std::string& value);

  mutable absl::Mutex mutex_;
  sqlite3* database_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace deltaserve::control
