// TrainingData: where a job's rows come from — inline texts in the request, or a dataset of the
// DatasetStore named in it. At submission Resolve checks the source (not both, the dataset
// exists and the job may use it) and pins the dataset's sha256 into the spec, so the job later
// reads exactly the bytes that were checked, whatever happens to the name meanwhile. Reports and
// lineages record Summary (the source and its sha256) instead of the data.
//   TrainingData forget{spec.forget_texts, spec.forget_dataset};
//   RETURN_IF_ERROR(forget.Resolve(datasets, "forget", spec.output));
//   ASSIGN_OR_RETURN(std::vector<ops::train::TrainingRow> rows, forget.Rows(datasets));
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "server/control/dataset_store.h"
#include "server/ops/train/lora_trainer.h"

namespace deltaserve::control {

struct TrainingData {
  std::vector<std::string> texts;
  std::string dataset;         // a dataset name; "" = the texts
  std::string dataset_sha256;  // set by Resolve

  bool empty() const { return texts.empty() && dataset.empty(); }
  // Resolve: INVALID_ARGUMENT when both texts and a dataset are given (`role` names the field,
  // e.g. "forget"), NOT_FOUND for an unknown dataset, PERMISSION_DENIED for one the job may not
  // use (CheckDatasetAccess).
  absl::Status Resolve(const DatasetStore& datasets, const std::string& role, const std::string& output);
  // Rows: the texts as plain rows, or the resolved dataset's rows.
  absl::StatusOr<std::vector<ops::train::TrainingRow>> Rows(const DatasetStore& datasets) const;
  // Examples: Rows tokenized by RowExamples (`what` names a row in errors, e.g. "forget row").
  absl::StatusOr<std::vector<ops::train::TrainingExample>> Examples(const DatasetStore& datasets,
                                                                     const model::Tokenizer& tokenizer,
                                                                     const std::string& what) const;
  // Summary: {"dataset", "sha256"} or {"inline_texts": count, "sha256": TextsSha256}.
  nlohmann::json Summary() const;

  // The spec's JSON fields for a role, e.g. "forget_texts", "forget_dataset", "forget_dataset_sha256".
  void ToJson(nlohmann::json& json, const std::string& texts_key, const std::string& dataset_key) const;
  static TrainingData FromJson(const nlohmann::json& json, const std::string& texts_key, const std::string& dataset_key);
};

}  // namespace deltaserve::control
