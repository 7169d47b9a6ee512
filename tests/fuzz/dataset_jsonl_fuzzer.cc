// Fuzzes dataset JSONL validation: an upload fed in two chunks (split where the first byte
// says) validates exactly as the whole file parsed at once, and is refused only with
// INVALID_ARGUMENT; never a crash or an exception.
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "server/control/dataset_lines.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using deltaserve::control::DatasetUpload;
  if (size == 0) return 0;
  const std::string_view jsonl(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t split = std::min<size_t>(data[0], jsonl.size());
  DatasetUpload upload("fuzz", {1 << 20, 1000});
  absl::Status status = upload.Append(jsonl.substr(0, split));
  if (status.ok()) status = upload.Append(jsonl.substr(split));
  if (status.ok()) status = upload.Finish();
  if (!status.ok() && status.code() != absl::StatusCode::kInvalidArgument) std::abort();
  auto rows = deltaserve::control::ParseDatasetRows(jsonl);
  if (!rows.ok() && rows.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
  // Within the limits, the upload and the whole-file parse agree (an upload without rows is
  // refused; an empty file parses to no rows).
  if (status.ok() && (!rows.ok() || static_cast<int64_t>(rows->size()) !=
                                        upload.text_rows() + upload.prompt_completion_rows())) {
    std::abort();
  }
  if (!status.ok() && rows.ok() && !rows->empty() && rows->size() <= 1000) std::abort();
  return 0;
}
