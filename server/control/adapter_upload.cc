#include "server/control/adapter_upload.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"

namespace deltaserve::control {

absl::StatusOr<std::unique_ptr<AdapterUpload>> AdapterUpload::Begin(const std::string& temp_parent,
                                                                    std::string name,
                                                                    UploadLimits limits) {
  ASSIGN_OR_RETURN(std::string directory, common::MakeTempDirectory(temp_parent, "upload-"));
  return std::unique_ptr<AdapterUpload>(new AdapterUpload(std::move(name), std::move(directory), limits));
}

AdapterUpload::~AdapterUpload() {
  CloseAll();
  if (!released_) common::RemoveRecursively(directory_).IgnoreError();
}

void AdapterUpload::CloseAll() {
  for (auto& [name, fd] : files_) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
}

absl::Status AdapterUpload::Append(const std::string& file_name, std::string_view data) {
  if (file_name != kConfigFile && file_name != kWeightsFile) {
    if (absl::EndsWith(file_name, ".bin") || absl::EndsWith(file_name, ".pt") ||
        absl::EndsWith(file_name, ".pkl")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "file \"", file_name, "\" is a pickle format, which deltaserve never loads; convert the "
          "adapter to safetensors (adapter_model.safetensors)"));
    }
    return absl::InvalidArgumentError(absl::StrCat("file \"", file_name, "\" is not part of an adapter: send ",
                                                   kConfigFile, " and ", kWeightsFile));
  }
  const int64_t limit = file_name == kConfigFile ? limits_.max_config_bytes : limits_.max_weights_bytes;
  int64_t& size = sizes_[file_name];
  if (size + static_cast<int64_t>(data.size()) > limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        file_name, " is larger than the limit of ", limit, " bytes",
        file_name == kWeightsFile ? " (--max-upload-bytes)" : ""));
  }
  auto [it, inserted] = files_.try_emplace(file_name, -1);
  if (inserted) {
    const std::string path = common::JoinPath(directory_, file_name);
    it->second = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (it->second < 0) {
      return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
    }
  }
  if (it->second < 0) return absl::FailedPreconditionError("the upload is already finished");
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(it->second, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot write ", file_name, " to the data dir: ",
                                                       std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  size += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::Status AdapterUpload::Finish() {
  for (const char* required : {kConfigFile, kWeightsFile}) {
    if (sizes_[required] == 0) {
      return absl::InvalidArgumentError(absl::StrCat("the upload has no ", required));
    }
  }
  for (auto& [name, fd] : files_) {
    if (fd >= 0 && ::fsync(fd) != 0) {
      return absl::InternalError(absl::StrCat("cannot fsync ", name, ": ", std::strerror(errno)));
    }
  }
  CloseAll();
  return common::SyncPath(directory_);
}

}  // namespace deltaserve::control
