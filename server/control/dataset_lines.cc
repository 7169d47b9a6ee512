#include "server/control/dataset_lines.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/json_limits.h"
#include "server/common/status_macros.h"

namespace deltaserve::control {
namespace {

constexpr size_t kMaxLineBytes = size_t{1} << 20;
constexpr int kMaxJsonDepth = 16;
constexpr const char* kLineShape = R"(each line must be {"text": "..."} or {"prompt": "...", "completion": "..."})";

bool IsBlank(std::string_view line) { return line.find_first_not_of(" \t\r") == std::string_view::npos; }

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

}  // namespace deltaserve::control
