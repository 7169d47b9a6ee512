// AdapterUpload: an adapter being uploaded, staged in a fresh temp directory under the data
// dir. Only adapter_config.json and adapter_model.safetensors are accepted (pickle formats
// such as adapter_model.bin are refused), each bounded in size. Chunks of a file are appended
// in arrival order. Finish checks both files are there and fsyncs them; VariantRegistry then
// validates the directory and renames it into place. Destroying an upload that was not
// Released removes its temp directory, so an aborted upload leaves nothing behind.
// Not thread-safe (one RPC owns it).
//   ASSIGN_OR_RETURN(auto upload, AdapterUpload::Begin(temp_dir, "acme/bot", limits));
//   RETURN_IF_ERROR(upload->Append("adapter_config.json", chunk));
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace deltaserve::control {

struct UploadLimits {
  int64_t max_config_bytes = int64_t{1} << 20;
  int64_t max_weights_bytes = int64_t{1} << 30;  // --max-upload-bytes
};

class AdapterUpload {
 public:
  static constexpr const char* kConfigFile = "adapter_config.json";
  static constexpr const char* kWeightsFile = "adapter_model.safetensors";

  static absl::StatusOr<std::unique_ptr<AdapterUpload>> Begin(const std::string& temp_parent,
                                                              std::string name, UploadLimits limits);
  ~AdapterUpload();
  AdapterUpload(const AdapterUpload&) = delete;
  AdapterUpload& operator=(const AdapterUpload&) = delete;

  absl::Status Append(const std::string& file_name, std::string_view data);
  // Finish closes and fsyncs the files; INVALID_ARGUMENT when one is missing or empty.
  absl::Status Finish();
  // Release hands the directory over (it was moved elsewhere); it is no longer removed.
  void Release() { released_ = true; }

  const std::string& name() const { return name_; }
  const std::string& directory() const { return directory_; }

 private:
  AdapterUpload(std::string name, std::string directory, UploadLimits limits)
      : name_(std::move(name)), directory_(std::move(directory)), limits_(limits) {}
  void CloseAll();

  std::string name_;
  std::string directory_;
  UploadLimits limits_;
  std::map<std::string, int> files_;  // file name -> open descriptor
  std::map<std::string, int64_t> sizes_;
  bool released_ = false;
};

}  // namespace deltaserve::control
