// SafetensorsFile: a memory-mapped .safetensors file with a strictly validated header.
// Open() checks the header length bound, JSON shape, dtype names, shapes, byte counts, that
// every tensor lies inside the file and that no two overlap; any violation is an
// INVALID_ARGUMENT naming the file and the offending tensor. It never reads outside the map.
// Immutable after Open(): safe to read from several threads. Tensors are views into the map,
// valid while the SafetensorsFile lives. No libtorch here (see safetensors_tensor.h).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/common/file_util.h"

namespace deltaserve::model {

enum class StoredDtype { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element of a stored dtype.
int64_t DtypeSize(StoredDtype dtype);
const char* DtypeName(StoredDtype dtype);

struct StoredTensor {
  StoredDtype dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapping
  int64_t byte_size = 0;
  int64_t NumElements() const;
};

class SafetensorsFile {
 public:
  // Largest header accepted (the format's reference implementation uses the same bound).
  static constexpr uint64_t kMaxHeaderBytes = 100u << 20;

  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);
  // Parse validates a file already in memory; `data` must outlive the returned object's use.
  static absl::StatusOr<SafetensorsFile> Parse(const uint8_t* data, size_t size,
                                               const std::string& name);

  const std::string& path() const { return path_; }
  const std::map<std::string, StoredTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Find returns nullptr when the tensor is absent.
  const StoredTensor* Find(const std::string& name) const;

 private:
  common::MappedFile mapping_;
  std::string path_;
  std::map<std::string, StoredTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace deltaserve::model
