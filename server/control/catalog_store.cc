#include "server/control/catalog_store.h"

#include <sqlite3.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"

namespace deltaserve::control {
namespace {

constexpr int kSchemaVersion = 4;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS variants (
  name TEXT PRIMARY KEY,
  owner_namespace TEXT NOT NULL,
  kind TEXT NOT NULL,
  state TEXT NOT NULL,
  parents_json TEXT NOT NULL,
  recipe_json TEXT NOT NULL,
  job_id TEXT NOT NULL,
  artifact_path TEXT NOT NULL,
  artifact_sha256_json TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  rank_summary TEXT NOT NULL,
  created_unix_nanos INTEGER NOT NULL,
  evaluation_json TEXT NOT NULL,
  version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS jobs (
  number INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  state TEXT NOT NULL,
  progress REAL NOT NULL,
  message TEXT NOT NULL,
  error TEXT NOT NULL,
  error_code TEXT NOT NULL,
  output_variant TEXT NOT NULL,
  spec_json TEXT NOT NULL,
  idempotency_key TEXT NOT NULL,
  memory_bytes INTEGER NOT NULL,
  created_unix_nanos INTEGER NOT NULL,
  started_unix_nanos INTEGER NOT NULL,
  finished_unix_nanos INTEGER NOT NULL,
  report_json TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs (idempotency_key)
  WHERE idempotency_key != '';
CREATE TABLE IF NOT EXISTS datasets (
  name TEXT PRIMARY KEY,
  owner_namespace TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  rows INTEGER NOT NULL,
  text_rows INTEGER NOT NULL,
  prompt_completion_rows INTEGER NOT NULL,
  size_bytes INTEGER NOT NULL,
  created_unix_nanos INTEGER NOT NULL
);
)sql";

constexpr const char* kDatasetColumns =
    "name, owner_namespace, sha256, rows, text_rows, prompt_completion_rows, size_bytes, created_unix_nanos";

constexpr const char* kColumns =
    "name, owner_namespace, kind, state, parents_json, recipe_json, job_id, artifact_path, "
    "artifact_sha256_json, size_bytes, rank_summary, created_unix_nanos, evaluation_json, version";

constexpr const char* kJobColumns =
    "number, kind, state, progress, message, error, error_code, output_variant, spec_json, "
    "idempotency_key, memory_bytes, created_unix_nanos, started_unix_nanos, finished_unix_nanos, report_json";

absl::Status SqliteError(sqlite3* database, const std::string& what) {
  return absl::InternalError(absl::StrCat("catalog: ", what, ": ", sqlite3_errmsg(database)));
}

absl::Status Execute(sqlite3* database, const std::string& sql) {
  char* error = nullptr;
  if (sqlite3_exec(database, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    absl::Status status = absl::InternalError(absl::StrCat("catalog: ", sql.substr(0, 60), ": ",
                                                           error != nullptr ? error : "unknown error"));
    sqlite3_free(error);
    return status;
  }
  return absl::OkStatus();
}

// Statement: a prepared statement finalized on scope exit.
class Statement {
 public:
  Statement(sqlite3* database, const std::string& sql) {
    if (sqlite3_prepare_v2(database, sql.c_str(), -1, &statement_, nullptr) != SQLITE_OK) statement_ = nullptr;
  }
  ~Statement() { sqlite3_finalize(statement_); }
  bool ok() const { return statement_ != nullptr; }
  sqlite3_stmt* get() { return statement_; }
  void Bind(int index, const std::string& value) {
    sqlite3_bind_text(statement_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
  }
  void Bind(int index, int64_t value) { sqlite3_bind_int64(statement_, index, value); }
  void Bind(int index, double value) { sqlite3_bind_double(statement_, index, value); }
  std::string Text(int column) {
    const unsigned char* text = sqlite3_column_text(statement_, column);
    return text == nullptr ? "" : reinterpret_cast<const char*>(text);
  }
  int64_t Integer(int column) { return sqlite3_column_int64(statement_, column); }
  double Real(int column) { return sqlite3_column_double(statement_, column); }

 private:
  sqlite3_stmt* statement_ = nullptr;
};

template <typename T>
T ParseOr(const std::string& text, T fallback) {
  nlohmann::json parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return fallback;
  try {
    return parsed.get<T>();
  } catch (const nlohmann::json::exception&) {
    return fallback;
  }
}

VariantRecord ReadRow(Statement& row) {
  VariantRecord record;
  record.name = row.Text(0);
  record.owner_namespace = row.Text(1);
  record.kind = row.Text(2);
  record.state = row.Text(3);
  record.parents = ParseOr<std::vector<std::string>>(row.Text(4), {});
  record.recipe_json = row.Text(5);
  record.job_id = row.Text(6);
  record.artifact_path = row.Text(7);
  record.artifact_sha256 = ParseOr<std::map<std::string, std::string>>(row.Text(8), {});
  record.size_bytes = row.Integer(9);
  record.rank_summary = row.Text(10);
  record.created_unix_nanos = row.Integer(11);
  record.evaluation_json = row.Text(12);
  record.version = row.Integer(13);
  return record;
}

DatasetRecord ReadDatasetRow(Statement& row) {
  DatasetRecord record;
  record.name = row.Text(0);
  record.owner_namespace = row.Text(1);
  record.sha256 = row.Text(2);
  record.rows = row.Integer(3);
  record.text_rows = row.Integer(4);
  record.prompt_completion_rows = row.Integer(5);
  record.size_bytes = row.Integer(6);
  record.created_unix_nanos = row.Integer(7);
  return record;
}

// ReadJobRow: the job of a row; DATA_LOSS for a kind or state this version does not know (a
// catalog written by a newer version).
absl::StatusOr<JobRecord> ReadJobRow(Statement& row) {
  JobRecord record;
  record.number = row.Integer(0);
  const std::optional<JobKind> kind = ParseJobKind(row.Text(1));
  const std::optional<JobState> state = ParseJobState(row.Text(2));
  if (!kind.has_value() || !state.has_value()) {
    return absl::DataLossError(absl::StrCat("job ", record.number, " in the catalog has kind \"", row.Text(1),
                                            "\" and state \"", row.Text(2), "\", which this version does not know"));
  }
  record.kind = *kind;
  record.state = *state;
  record.progress = row.Real(3);
  record.message = row.Text(4);
  record.error = row.Text(5);
  record.error_code = row.Text(6);
  record.output_variant = row.Text(7);
  record.spec_json = row.Text(8);
  record.idempotency_key = row.Text(9);
  record.memory_bytes = row.Integer(10);
  record.created_unix_nanos = row.Integer(11);
  record.started_unix_nanos = row.Integer(12);
  record.finished_unix_nanos = row.Integer(13);
  record.report_json = row.Text(14);
  return record;
}

// SelectAll runs a query and reads every row with `read` (which returns a Record or a
// StatusOr of one); `what` names the rows in errors.
template <typename Record, typename Read>
absl::StatusOr<std::vector<Record>> SelectAll(sqlite3* database, const std::string& sql, Read read, const char* what) {
  Statement select(database, sql);
  if (!select.ok()) return SqliteError(database, "preparing a query");
  std::vector<Record> records;
  int result;
  while ((result = sqlite3_step(select.get())) == SQLITE_ROW) {
    absl::StatusOr<Record> record = read(select);
    if (!record.ok()) return record.status();
    records.push_back(*std::move(record));
  }
  if (result != SQLITE_DONE) return SqliteError(database, absl::StrCat("listing ", what, "s"));
  return records;
}

// DeleteByName deletes the row `name` of `table` (variants or datasets); NOT_FOUND when absent.
absl::Status DeleteByName(sqlite3* database, const char* table, const char* what, const std::string& name) {
  Statement remove(database, absl::StrCat("DELETE FROM ", table, " WHERE name = ?"));
  if (!remove.ok()) return SqliteError(database, "preparing a delete");
  remove.Bind(1, name);
  if (sqlite3_step(remove.get()) != SQLITE_DONE) return SqliteError(database, absl::StrCat("deleting a ", what));
  if (sqlite3_changes(database) == 0) return absl::NotFoundError(absl::StrCat(what, " \"", name, "\" does not exist"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CatalogStore>> CatalogStore::Open(const std::string& path) {
  sqlite3* database = nullptr;
  if (sqlite3_open_v2(path.c_str(), &database, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    absl::Status status = absl::InternalError(absl::StrCat("cannot open the catalog ", path, ": ",
                                                           database ? sqlite3_errmsg(database) : "out of memory"));
    sqlite3_close(database);
    return status;
  }
  std::unique_ptr<CatalogStore> store(new CatalogStore(database));
  sqlite3_busy_timeout(database, 5000);
  absl::Status status = Execute(database, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
  int current = 0;
  if (status.ok()) {
    Statement version(database, "PRAGMA user_version");
    if (version.ok() && sqlite3_step(version.get()) == SQLITE_ROW) current = static_cast<int>(version.Integer(0));
    if (current > kSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat("the catalog ", path, " has schema version ", current,
                                                        ", newer than this server's ", kSchemaVersion));
    }
  }
  if (status.ok()) status = Execute(database, kSchema);
  // Version 3 numbers the versions of a name (replace_target); older rows are version 1.
  if (status.ok() && current >= 1 && current < 3) {
    status = Execute(database, "ALTER TABLE variants ADD COLUMN version INTEGER NOT NULL DEFAULT 1");
  }
  // Version 4 keeps a report per job.
  if (status.ok() && current >= 1 && current < 4) {
    // A catalog without a jobs table got the current one from kSchema above.
    Statement column(database, "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'report_json'");
    const bool present = column.ok() && sqlite3_step(column.get()) == SQLITE_ROW && column.Integer(0) > 0;
    if (!present) status = Execute(database, "ALTER TABLE jobs ADD COLUMN report_json TEXT NOT NULL DEFAULT ''");
  }
  if (status.ok()) status = Execute(database, absl::StrCat("PRAGMA user_version=", kSchemaVersion));
  if (!status.ok()) return status;
  return store;
}

CatalogStore::~CatalogStore() {
  absl::MutexLock lock(&mutex_);
  sqlite3_close(database_);
}

absl::Status CatalogStore::InsertVariant(const VariantRecord& record) {
  absl::MutexLock lock(&mutex_);
  return InsertVariantLocked(record);
}

absl::Status CatalogStore::InsertVariantLocked(const VariantRecord& record) {
  Statement insert(database_, absl::StrCat("INSERT INTO variants (", kColumns,
                                           ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"));
  if (!insert.ok()) return SqliteError(database_, "preparing an insert");
  insert.Bind(1, record.name);
  insert.Bind(2, record.owner_namespace);
  insert.Bind(3, record.kind);
  insert.Bind(4, record.state);
  insert.Bind(5, nlohmann::json(record.parents).dump());
  insert.Bind(6, record.recipe_json);
  insert.Bind(7, record.job_id);
  insert.Bind(8, record.artifact_path);
  insert.Bind(9, nlohmann::json(record.artifact_sha256).dump());
  insert.Bind(10, record.size_bytes);
  insert.Bind(11, record.rank_summary);
  insert.Bind(12, record.created_unix_nanos);
  insert.Bind(13, record.evaluation_json);
  insert.Bind(14, record.version);
  const int result = sqlite3_step(insert.get());
  if (result == SQLITE_CONSTRAINT) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", record.name, "\" already exists"));
  }
  if (result != SQLITE_DONE) return SqliteError(database_, "inserting a variant");
  return absl::OkStatus();
}

absl::Status CatalogStore::UpdateColumn(const char* column, const std::string& name, const std::string& value) {
  absl::MutexLock lock(&mutex_);
  Statement update(database_, absl::StrCat("UPDATE variants SET ", column, " = ? WHERE name = ?"));
  if (!update.ok()) return SqliteError(database_, "preparing an update");
  update.Bind(1, value);
  update.Bind(2, name);
  if (sqlite3_step(update.get()) != SQLITE_DONE) return SqliteError(database_, "updating a variant");
  if (sqlite3_changes(database_) == 0) {
    return absl::NotFoundError(absl::StrCat("variant \"", name, "\" does not exist"));
  }
  return absl::OkStatus();
}

absl::Status CatalogStore::SetVariantState(const std::string& name, const std::string& state) {
  return UpdateColumn("state", name, state);
}

absl::Status CatalogStore::SetEvaluation(const std::string& name, const std::string& evaluation_json) {
  return UpdateColumn("evaluation_json", name, evaluation_json);
}

absl::Status CatalogStore::DeleteVariant(const std::string& name) {
  absl::MutexLock lock(&mutex_);
  return DeleteByName(database_, "variants", "variant", name);
}

absl::Status CatalogStore::ReplaceVariant(const std::string& name, const std::string& previous_name,
                                          const std::string& previous_state, const VariantRecord& replacement) {
  absl::MutexLock lock(&mutex_);
  RETURN_IF_ERROR(Execute(database_, "BEGIN IMMEDIATE"));
  absl::Status status = [&]() -> absl::Status {
    Statement rename(database_, "UPDATE variants SET name = ?, state = ? WHERE name = ?");
    if (!rename.ok()) return SqliteError(database_, "preparing an update");
    rename.Bind(1, previous_name);
    rename.Bind(2, previous_state);
    rename.Bind(3, name);
    const int result = sqlite3_step(rename.get());
    if (result == SQLITE_CONSTRAINT) {
      return absl::AlreadyExistsError(absl::StrCat("variant \"", previous_name, "\" already exists"));
    }
    if (result != SQLITE_DONE) return SqliteError(database_, "renaming a variant");
    if (sqlite3_changes(database_) == 0) {
      return absl::NotFoundError(absl::StrCat("variant \"", name, "\" has no catalog row"));
    }
    return InsertVariantLocked(replacement);
  }();
  if (!status.ok()) {
    Execute(database_, "ROLLBACK").IgnoreError();
    return status;
  }
  return Execute(database_, "COMMIT");
}

absl::StatusOr<VariantRecord> CatalogStore::GetVariant(const std::string& name) const {
  absl::MutexLock lock(&mutex_);
  Statement select(database_, absl::StrCat("SELECT ", kColumns, " FROM variants WHERE name = ?"));
  if (!select.ok()) return SqliteError(database_, "preparing a query");
  select.Bind(1, name);
  const int result = sqlite3_step(select.get());
  if (result == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("variant \"", name, "\" does not exist"));
  if (result != SQLITE_ROW) return SqliteError(database_, "reading a variant");
  return ReadRow(select);
}

absl::StatusOr<std::vector<VariantRecord>> CatalogStore::ListVariants() const {
  absl::MutexLock lock(&mutex_);
  return SelectAll<VariantRecord>(database_, absl::StrCat("SELECT ", kColumns, " FROM variants ORDER BY name"), &ReadRow,
                                  "variant");
}

absl::Status CatalogStore::InsertDataset(const DatasetRecord& record) {
  absl::MutexLock lock(&mutex_);
  Statement insert(database_, absl::StrCat("INSERT INTO datasets (", kDatasetColumns, ") VALUES (?,?,?,?,?,?,?,?)"));
  if (!insert.ok()) return SqliteError(database_, "preparing an insert");
  insert.Bind(1, record.name);
  insert.Bind(2, record.owner_namespace);
  insert.Bind(3, record.sha256);
  insert.Bind(4, record.rows);
  insert.Bind(5, record.text_rows);
  insert.Bind(6, record.prompt_completion_rows);
  insert.Bind(7, record.size_bytes);
  insert.Bind(8, record.created_unix_nanos);
  const int result = sqlite3_step(insert.get());
  if (result == SQLITE_CONSTRAINT) {
    return absl::AlreadyExistsError(absl::StrCat("dataset \"", record.name, "\" already exists"));
  }
  if (result != SQLITE_DONE) return SqliteError(database_, "inserting a dataset");
  return absl::OkStatus();
}

absl::Status CatalogStore::DeleteDataset(const std::string& name) {
  absl::MutexLock lock(&mutex_);
  return DeleteByName(database_, "datasets", "dataset", name);
}

absl::StatusOr<std::vector<DatasetRecord>> CatalogStore::ListDatasets() const {
  absl::MutexLock lock(&mutex_);
  return SelectAll<DatasetRecord>(database_, absl::StrCat("SELECT ", kDatasetColumns, " FROM datasets ORDER BY name"), &ReadDatasetRow,
                   "dataset");
}

absl::Status CatalogStore::InsertJob(JobRecord& record) {
  absl::MutexLock lock(&mutex_);
  Statement insert(database_, absl::StrCat("INSERT INTO jobs (", kJobColumns,
                                           ") VALUES (NULL,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"));
  if (!insert.ok()) return SqliteError(database_, "preparing an insert");
  insert.Bind(1, std::string(JobKindName(record.kind)));
  insert.Bind(2, std::string(JobStateName(record.state)));
  insert.Bind(3, record.progress);
  insert.Bind(4, record.message);
  insert.Bind(5, record.error);
  insert.Bind(6, record.error_code);
  insert.Bind(7, record.output_variant);
  insert.Bind(8, record.spec_json);
  insert.Bind(9, record.idempotency_key);
  insert.Bind(10, record.memory_bytes);
  insert.Bind(11, record.created_unix_nanos);
  insert.Bind(12, record.started_unix_nanos);
  insert.Bind(13, record.finished_unix_nanos);
  insert.Bind(14, record.report_json);
  const int result = sqlite3_step(insert.get());
  if (result == SQLITE_CONSTRAINT) {
    return absl::AlreadyExistsError(
        absl::StrCat("idempotency key \"", record.idempotency_key, "\" belongs to another job"));
  }
  if (result != SQLITE_DONE) return SqliteError(database_, "inserting a job");
  record.number = sqlite3_last_insert_rowid(database_);
  return absl::OkStatus();
}

absl::Status CatalogStore::UpdateJob(const JobRecord& record) {
  absl::MutexLock lock(&mutex_);
  Statement update(database_,
                   "UPDATE jobs SET state = ?, progress = ?, message = ?, error = ?, error_code = ?, "
                   "output_variant = ?, memory_bytes = ?, started_unix_nanos = ?, finished_unix_nanos = ?, "
                   "report_json = ? WHERE number = ?");
  if (!update.ok()) return SqliteError(database_, "preparing an update");
  update.Bind(1, std::string(JobStateName(record.state)));
  update.Bind(2, record.progress);
  update.Bind(3, record.message);
  update.Bind(4, record.error);
  update.Bind(5, record.error_code);
  update.Bind(6, record.output_variant);
  update.Bind(7, record.memory_bytes);
  update.Bind(8, record.started_unix_nanos);
  update.Bind(9, record.finished_unix_nanos);
  update.Bind(10, record.report_json);
  update.Bind(11, record.number);
  if (sqlite3_step(update.get()) != SQLITE_DONE) return SqliteError(database_, "updating a job");
  if (sqlite3_changes(database_) == 0) {
    return absl::NotFoundError(absl::StrCat("job ", record.number, " does not exist"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<JobRecord>> CatalogStore::ListJobs() const {
  absl::MutexLock lock(&mutex_);
  return SelectAll<JobRecord>(database_, absl::StrCat("SELECT ", kJobColumns, " FROM jobs ORDER BY number"), &ReadJobRow,
                              "job");
}

}  // namespace deltaserve::control
