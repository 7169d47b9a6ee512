#include "server/control/dataset_store.h"

#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/common/file_util.h"
#include "server/common/json_limits.h"
#include "server/common/sha256.h"
#include "server/common/status_macros.h"
#include "server/control/job_runner.h"
#include "server/control/variant_catalog.h"

namespace deltaserve::control {
namespace {

constexpr size_t kMaxLineBytes = size_t{1} << 20;
constexpr int kMaxJsonDepth = 16;
constexpr const char* kLineShape = R"(each line must be {"text": "..."} or {"prompt": "...", "completion": "..."})";

bool IsBlank(std::string_view line) { return line.find_first_not_of(" \t\r") == std::string_view::npos; }

absl::Status ValidateDatasetName(const std::string& name) {
  absl::Status valid = VariantCatalog::ValidateName(name);
  if (valid.ok()) return valid;
  return absl::InvalidArgumentError(absl::StrCat(
      "dataset name \"", name, "\" is invalid: use [a-z0-9][a-z0-9._-]{0,63}, optionally prefixed by \"namespace/\""));
}

}  // namespace

absl::StatusOr<ops::train::TrainingRow> ParseDatasetLine(std::string_view line, int64_t line_number) {
  auto failed = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": ", why, "; ", kLineShape));
  };
  if (line.size() > kMaxLineBytes) return failed(absl::StrCat("the line is longer than ", kMaxLineBytes, " bytes"));
  if (!common::JsonNestingWithin(line, kMaxJsonDepth)) {
    return failed(absl::StrCat("JSON nested deeper than ", kMaxJsonDepth, " levels"));
  }
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& error) {
    return failed(absl::StrCat("not valid JSON (", error.what(), ")"));
  }
  if (!json.is_object()) return failed("not a JSON object");
  auto string_field = [&](const char* key) -> absl::StatusOr<std::string> {
    const auto it = json.find(key);
    if (!it->is_string()) return failed(absl::StrCat("\"", key, "\" is not a string"));
    std::string value = it->get<std::string>();
    if (value.empty()) return failed(absl::StrCat("\"", key, "\" is empty"));
    return value;
  };
  const bool has_text = json.contains("text");
  const bool has_prompt = json.contains("prompt"), has_completion = json.contains("completion");
  ops::train::TrainingRow row;
  if (has_text && !has_prompt && !has_completion) {
    ASSIGN_OR_RETURN(row.completion, string_field("text"));
    return row;
  }
  if (!has_text && has_prompt && has_completion) {
    ASSIGN_OR_RETURN(row.prompt, string_field("prompt"));
    ASSIGN_OR_RETURN(row.completion, string_field("completion"));
    return row;
  }
  if (has_text) return failed("\"text\" cannot be combined with \"prompt\" or \"completion\"");
  if (has_prompt != has_completion) return failed(has_prompt ? "\"completion\" is missing" : "\"prompt\" is missing");
  return failed("no \"text\" and no \"prompt\"/\"completion\"");
}

absl::StatusOr<std::vector<ops::train::TrainingRow>> ParseDatasetRows(std::string_view jsonl) {
  std::vector<ops::train::TrainingRow> rows;
  int64_t line_number = 0;
  size_t start = 0;
  while (start < jsonl.size()) {
    size_t end = jsonl.find('\n', start);
    if (end == std::string_view::npos) end = jsonl.size();
    const std::string_view line = jsonl.substr(start, end - start);
    ++line_number;
    start = end + 1;
    if (IsBlank(line)) continue;
    ASSIGN_OR_RETURN(rows.emplace_back(), ParseDatasetLine(line, line_number));
  }
  return rows;
}

absl::Status DatasetUpload::ValidateLine(std::string_view line) {
  ++lines_;
  if (IsBlank(line)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ops::train::TrainingRow row, ParseDatasetLine(line, lines_));
  ++(row.is_prompt_completion() ? prompt_completion_rows_ : text_rows_);
  if (text_rows_ + prompt_completion_rows_ > limits_.max_rows) {
    return absl::InvalidArgumentError(absl::StrCat("line ", lines_, ": dataset \"", name_, "\" has more than ",
                                                   limits_.max_rows, " rows, the server's limit"));
  }
  return absl::OkStatus();
}

absl::Status DatasetUpload::Append(std::string_view data) {
  if (static_cast<int64_t>(bytes_.size() + data.size()) > limits_.max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset \"", name_, "\" is larger than the server's limit of ", limits_.max_bytes, " bytes"));
  }
  bytes_.append(data);
  size_t end;
  while ((end = bytes_.find('\n', validated_)) != std::string::npos) {
    RETURN_IF_ERROR(ValidateLine(std::string_view(bytes_).substr(validated_, end - validated_)));
    validated_ = end + 1;
  }
  if (bytes_.size() - validated_ > kMaxLineBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", lines_ + 1, ": the line is longer than ", kMaxLineBytes, " bytes; ", kLineShape));
  }
  return absl::OkStatus();
}

absl::Status DatasetUpload::Finish() {
  if (validated_ < bytes_.size()) {
    RETURN_IF_ERROR(ValidateLine(std::string_view(bytes_).substr(validated_)));
    validated_ = bytes_.size();
  }
  if (text_rows_ + prompt_completion_rows_ == 0) {
    return absl::InvalidArgumentError(absl::StrCat("dataset \"", name_, "\" has no rows; ", kLineShape));
  }
  return absl::OkStatus();
}

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
    if (IsTerminalJobState(job.state)) continue;
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
