#include "server/control/dataset_store.h"

#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/common/file_util.h"
#include "server/common/sha256.h"
#include "server/common/status_macros.h"
#include "server/control/job_runner.h"
#include "server/control/variant_catalog.h"

namespace deltaserve::control {
namespace {

absl::Status ValidateDatasetName(const std::string& name) {
  absl::Status valid = VariantCatalog::ValidateName(name);
  if (valid.ok()) return valid;
  return absl::InvalidArgumentError(absl::StrCat(
      "dataset name \"", name, "\" is invalid: use [a-z0-9][a-z0-9._-]{0,63}, optionally prefixed by \"namespace/\""));
}

}  // namespace

absl::Status CheckDatasetAccess(const std::string& dataset, const std::string& output) {
  const std::string owner = NamespaceOf(dataset);
  if (owner.empty() || owner == NamespaceOf(output)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("dataset \"", dataset, "\" belongs to namespace \"", owner,
                                                  "\"; a job writing \"", output, "\" may use datasets of its own ",
                                                  "namespace or datasets without one"));
}

absl::StatusOr<std::unique_ptr<DatasetStore>> DatasetStore::Create(const std::string& data_dir, DatasetLimits limits,
                                                                   CatalogStore* store) {
  std::unique_ptr<DatasetStore> datasets(new DatasetStore(common::JoinPath(data_dir, "datasets"), limits, store));
  RETURN_IF_ERROR(common::MakeDirectories(datasets->directory_));
  absl::MutexLock lock(&datasets->mutex_);
  RETURN_IF_ERROR(datasets->RemoveUnreferenced({}));
  return datasets;
}

std::string DatasetStore::FileOf(const std::string& sha256) const {
  return common::JoinPath(directory_, sha256 + ".jsonl");
}

absl::StatusOr<std::unique_ptr<DatasetUpload>> DatasetStore::BeginUpload(const std::string& name) const {
  RETURN_IF_ERROR(ValidateDatasetName(name));
  if (Get(name).ok()) return absl::AlreadyExistsError(absl::StrCat("dataset \"", name, "\" already exists"));
  return std::make_unique<DatasetUpload>(name, limits_);
}

absl::StatusOr<DatasetRecord> DatasetStore::Commit(std::unique_ptr<DatasetUpload> upload) {
  RETURN_IF_ERROR(upload->Finish());
  DatasetRecord record;
  record.name = upload->name();
  record.owner_namespace = NamespaceOf(record.name);
  record.sha256 = common::Sha256Hex(upload->bytes());
  record.text_rows = upload->text_rows();
  record.prompt_completion_rows = upload->prompt_completion_rows();
  record.rows = record.text_rows + record.prompt_completion_rows;
  record.size_bytes = static_cast<int64_t>(upload->bytes().size());
  record.created_unix_nanos = absl::ToUnixNanos(absl::Now());
  absl::MutexLock lock(&mutex_);
  const std::string file = FileOf(record.sha256);
  const bool existed = common::PathExists(file);
  if (!existed) {
    RETURN_IF_ERROR(common::WriteFileAtomically(file, upload->bytes()));
    RETURN_IF_ERROR(common::SyncPath(directory_));
  }
  absl::Status inserted = store_->InsertDataset(record);
  if (!inserted.ok()) {
    if (!existed) RemoveUnreferenced({record.sha256}).IgnoreError();
    return inserted;
  }
  return record;
}

absl::StatusOr<DatasetRecord> DatasetStore::Get(const std::string& name) const {
  RETURN_IF_ERROR(ValidateDatasetName(name));
  ASSIGN_OR_RETURN(std::vector<DatasetRecord> all, store_->ListDatasets());
  for (DatasetRecord& record : all) {
    if (record.name == name) return std::move(record);
  }
  return absl::NotFoundError(absl::StrCat("dataset \"", name, "\" does not exist"));
}

absl::StatusOr<std::vector<DatasetRecord>> DatasetStore::List(const std::string& prefix, const std::string& after,
                                                              size_t limit) const {
  ASSIGN_OR_RETURN(std::vector<DatasetRecord> all, store_->ListDatasets());
  std::vector<DatasetRecord> page;
  for (DatasetRecord& record : all) {
    if (page.size() >= limit) break;
    if (!absl::StartsWith(record.name, prefix) || (!after.empty() && record.name <= after)) continue;
    page.push_back(std::move(record));
  }
  return page;
}

absl::Status DatasetStore::Delete(const std::string& name) {
  ASSIGN_OR_RETURN(DatasetRecord record, Get(name));
  absl::MutexLock lock(&mutex_);
  RETURN_IF_ERROR(store_->DeleteDataset(name));
  return RemoveUnreferenced({record.sha256});
}

absl::Status DatasetStore::RemoveUnreferenced(const std::vector<std::string>& candidates) {
  std::set<std::string> files(candidates.begin(), candidates.end());
  if (candidates.empty()) {
    std::error_code error;
    for (const auto& entry : std::filesystem::directory_iterator(directory_, error)) {
      const std::string file = entry.path().filename().string();
      if (absl::EndsWith(file, ".jsonl")) files.insert(file.substr(0, file.size() - 6));
      if (absl::EndsWith(file, ".tmp")) common::RemoveRecursively(entry.path().string()).IgnoreError();
    }
  }
  if (files.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<DatasetRecord> datasets, store_->ListDatasets());
  for (const DatasetRecord& dataset : datasets) files.erase(dataset.sha256);
  ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, store_->ListJobs());
  for (const JobRecord& job : jobs) {
    if (IsTerminal(job.state)) continue;
    for (auto it = files.begin(); it != files.end();) {
      it = absl::StrContains(job.spec_json, *it) ? files.erase(it) : std::next(it);
    }
  }
  for (const std::string& sha256 : files) RETURN_IF_ERROR(common::RemoveRecursively(FileOf(sha256)));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ops::train::TrainingRow>> DatasetStore::ReadRows(const std::string& sha256) const {
  absl::StatusOr<std::string> bytes = common::ReadFileToString(FileOf(sha256), size_t{4} << 30);
  if (!bytes.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the dataset file ", sha256, " can no longer be read: ", bytes.status().message()));
  }
  if (common::Sha256Hex(*bytes) != sha256) {
    return absl::DataLossError(absl::StrCat("the dataset file ", sha256, " no longer matches its sha256"));
  }
  return ParseDatasetRows(*bytes);
}

}  // namespace deltaserve::control
