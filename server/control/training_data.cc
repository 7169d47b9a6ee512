#include "server/control/training_data.h"

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/control/job_artifacts.h"

namespace deltaserve::control {

absl::Status TrainingData::Resolve(const DatasetStore& datasets, const std::string& role, const std::string& output) {
  if (dataset.empty()) return absl::OkStatus();
  if (!texts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("give either ", role, " texts or a ", role, " dataset (\"", dataset, "\"), not both"));
  }
  absl::StatusOr<DatasetRecord> record = datasets.Get(dataset);
  if (!record.ok()) {
    return absl::Status(record.status().code(), absl::StrCat(role, " dataset: ", record.status().message()));
  }
  RETURN_IF_ERROR(CheckDatasetAccess(dataset, output));
  dataset_sha256 = record->sha256;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ops::train::TrainingRow>> TrainingData::Rows(const DatasetStore& datasets) const {
  if (dataset.empty()) return ops::train::TextRows(texts);
  return datasets.ReadRows(dataset_sha256);
}

absl::StatusOr<std::vector<ops::train::TrainingExample>> TrainingData::Examples(const DatasetStore& datasets,
                                                                                const model::Tokenizer& tokenizer,
                                                                                const std::string& what) const {
  ASSIGN_OR_RETURN(std::vector<ops::train::TrainingRow> rows, Rows(datasets));
  return ops::train::RowExamples(tokenizer, rows, what);
}

nlohmann::json TrainingData::Summary() const {
  if (!dataset.empty()) return {{"dataset", dataset}, {"sha256", dataset_sha256}};
  return {{"inline_texts", texts.size()}, {"sha256", TextsSha256(texts)}};
}

void TrainingData::ToJson(nlohmann::json& json, const std::string& texts_key, const std::string& dataset_key) const {
  json[texts_key] = texts;
  json[dataset_key] = dataset;
  json[dataset_key + "_sha256"] = dataset_sha256;
}

TrainingData TrainingData::FromJson(const nlohmann::json& json, const std::string& texts_key,
                                    const std::string& dataset_key) {
  TrainingData data;
  data.texts = json.at(texts_key).get<std::vector<std::string>>();
  // Specs stored before datasets existed have no dataset fields.
  data.dataset = json.value(dataset_key, "");
  data.dataset_sha256 = json.value(dataset_key + "_sha256", "");
  return data;
}

}  // namespace deltaserve::control
