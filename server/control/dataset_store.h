// DatasetStore: named JSONL datasets that jobs train and evaluate on. A dataset is uploaded in
// chunks (DatasetUpload), validated line by line as the chunks arrive — every non-blank line is
// a JSON object with a "text" string, or with "prompt" and "completion" strings (other keys
// are ignored) — and committed as DATA_DIR/datasets/SHA256.jsonl (content-addressed: two
// datasets with the same bytes share one file) plus a catalog row (name, owner namespace,
// sha256, row counts, size). Names follow the variant rule ("namespace/name" or "name"); a
// dataset in namespace N may be used only by jobs whose output lies in N, one without a
// namespace by any job (CheckDatasetAccess).
// Jobs record the sha256 they resolved at submission and read exactly those bytes when they run
// (ReadRows verifies the digest), so deleting or replacing a name never changes what an
// accepted job trains on: Delete keeps a file that a queued or running job still refers to,
// and start-up removes files nothing refers to any more.
// Thread-safe. The CatalogStore must outlive the store.
//   ASSIGN_OR_RETURN(auto datasets, DatasetStore::Create(data_dir, {max_bytes, max_rows}, store));
//   ASSIGN_OR_RETURN(auto upload, datasets->BeginUpload("acme/facts"));
//   RETURN_IF_ERROR(upload->Append(chunk));
//   ASSIGN_OR_RETURN(DatasetRecord record, datasets->Commit(std::move(upload)));
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/control/catalog_store.h"
#include "server/control/dataset_lines.h"
#include "server/ops/train/training_row.h"

namespace deltaserve::control {

// CheckDatasetAccess: PERMISSION_DENIED when a job writing `output` may not use `dataset`.
absl::Status CheckDatasetAccess(const std::string& dataset, const std::string& output);

class DatasetStore {
 public:
  static absl::StatusOr<std::unique_ptr<DatasetStore>> Create(const std::string& data_dir, DatasetLimits limits,
                                                              CatalogStore* store);

  // BeginUpload: INVALID_ARGUMENT for a malformed name, ALREADY_EXISTS for a taken one.
  absl::StatusOr<std::unique_ptr<DatasetUpload>> BeginUpload(const std::string& name) const;
  // Commit finishes the upload, writes its file (fsynced) and then its row.
  absl::StatusOr<DatasetRecord> Commit(std::unique_ptr<DatasetUpload> upload);
  // Get: NOT_FOUND when absent.
  absl::StatusOr<DatasetRecord> Get(const std::string& name) const;
  // List returns up to `limit` datasets whose names start with `prefix` and sort after `after`.
  absl::StatusOr<std::vector<DatasetRecord>> List(const std::string& prefix, const std::string& after,
                                                  size_t limit) const;
  // Delete removes the name, and its file unless another dataset or a queued or running job
  // still refers to it.
  absl::Status Delete(const std::string& name);
  // ReadRows reads the rows of the file with this digest: FAILED_PRECONDITION when it is gone,
  // DATA_LOSS when its bytes no longer match.
  absl::StatusOr<std::vector<ops::train::TrainingRow>> ReadRows(const std::string& sha256) const;

 private:
  DatasetStore(std::string directory, DatasetLimits limits, CatalogStore* store)
      : directory_(std::move(directory)), limits_(limits), store_(store) {}
  std::string FileOf(const std::string& sha256) const;
  // RemoveUnreferenced deletes the files among `candidates` (all when empty) that no dataset row
  // and no queued or running job refers to.
  absl::Status RemoveUnreferenced(const std::vector<std::string>& candidates) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const std::string directory_;
  const DatasetLimits limits_;
  CatalogStore* const store_;
  absl::Mutex mutex_;  // orders commits and deletes (a file is never removed while committed)
};

}  // namespace deltaserve::control
