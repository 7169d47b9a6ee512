// Datasets' JSONL lines: every non-blank line is a JSON object with a "text" string, or with
// "prompt" and "completion" strings (other keys are ignored). ParseDatasetLine and
// ParseDatasetRows read them into TrainingRows; DatasetUpload validates an upload line by line as
// its chunks arrive (a chunk may split a line anywhere), within DatasetLimits. Every error is
// INVALID_ARGUMENT "line N: <what is wrong>; each line must be ...". Lines, JSON depth, bytes and
// rows are bounded. No I/O here (DatasetStore stores what an upload validated).
//   DatasetUpload upload("acme/facts", limits);
//   RETURN_IF_ERROR(upload.Append(chunk));  // for each chunk
//   RETURN_IF_ERROR(upload.Finish());
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/ops/train/training_row.h"

namespace deltaserve::control {

// ParseDatasetLine reads one JSONL line (1-based `line_number`, for the message) into a row;
// INVALID_ARGUMENT "line N: ..." saying what is wrong and what a line must look like.
absl::StatusOr<ops::train::TrainingRow> ParseDatasetLine(std::string_view line, int64_t line_number);
// ParseDatasetRows parses a whole JSONL file (blank lines skipped).
absl::StatusOr<std::vector<ops::train::TrainingRow>> ParseDatasetRows(std::string_view jsonl);

// The largest dataset an upload may store (--max-dataset-bytes, --max-dataset-rows).
struct DatasetLimits {
  int64_t max_bytes = int64_t{256} << 20;
  int64_t max_rows = 1'000'000;
};

// A dataset upload in progress: the bytes so far and their validation. Not thread-safe.
class DatasetUpload {
 public:
  DatasetUpload(std::string name, DatasetLimits limits) : name_(std::move(name)), limits_(limits) {}
  // Append adds a chunk and validates every line it completes; the first invalid line fails the
  // upload (INVALID_ARGUMENT with its line number), as does going over a limit.
  absl::Status Append(std::string_view data);
  // Finish validates the last line (which needs no newline); INVALID_ARGUMENT for no rows.
  absl::Status Finish();

  const std::string& name() const { return name_; }
  const std::string& bytes() const { return bytes_; }
  int64_t text_rows() const { return text_rows_; }
  int64_t prompt_completion_rows() const { return prompt_completion_rows_; }

 private:
  absl::Status ValidateLine(std::string_view line);

  std::string name_;
  DatasetLimits limits_;
  std::string bytes_;
  size_t validated_ = 0;  // bytes_ up to here are whole validated lines
  int64_t lines_ = 0;
  int64_t text_rows_ = 0;
  int64_t prompt_completion_rows_ = 0;
};

}  // namespace deltaserve::control
