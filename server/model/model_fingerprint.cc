#include "server/model/model_fingerprint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/common/sha256.h"

namespace deltaserve::model {
namespace {

constexpr std::streamoff kEdgeBytes = 1 << 20;

absl::Status HashRange(std::ifstream& file, std::streamoff offset, std::streamoff size, common::Sha256& hash) {
  std::string buffer(static_cast<size_t>(size), '\0');
  file.seekg(offset);
  if (!file.read(buffer.data(), size)) return absl::DataLossError("a model file could not be read");
  hash.Update(buffer);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ModelFingerprint(const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::exists(fs::path(model_dir) / "config.json", error)) {
    return absl::NotFoundError(absl::StrCat(model_dir, " has no config.json"));
  }
  std::vector<fs::path> files = {fs::path(model_dir) / "config.json"};
  std::vector<fs::path> weights;
  for (const auto& entry : fs::directory_iterator(model_dir, error)) {
    if (entry.path().extension() == ".safetensors") weights.push_back(entry.path());
  }
  std::sort(weights.begin(), weights.end());
  files.insert(files.end(), weights.begin(), weights.end());
  common::Sha256 hash;
  for (const fs::path& path : files) {
    std::ifstream file(path, std::ios::binary);
    if (!file) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
    file.seekg(0, std::ios::end);
    const std::streamoff size = file.tellg();
    hash.Update(absl::StrCat(path.filename().string(), ":", size, ";"));
    if (size <= 2 * kEdgeBytes) {
      if (absl::Status read = HashRange(file, 0, size, hash); !read.ok()) return read;
    } else {
      if (absl::Status read = HashRange(file, 0, kEdgeBytes, hash); !read.ok()) return read;
      if (absl::Status read = HashRange(file, size - kEdgeBytes, kEdgeBytes, hash); !read.ok()) return read;
    }
  }
  return hash.HexDigest().substr(0, 16);
}

}  // namespace deltaserve::model
