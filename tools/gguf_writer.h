// GgufWriter: writes a GGUF file (version 3, the format llama.cpp reads; documented in ggml's
// docs/gguf.md): a header, typed metadata key/values, tensor descriptions, then the tensor data,
// each tensor aligned to 32 bytes. Tensors are float32; GGUF lists dimensions fastest-varying
// first, so a row-major [rows, columns] tensor is described as (columns, rows): AddTensor does
// that reversal. Collects everything in memory, then Write() writes the file. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/status.h"

namespace deltaserve::tools {

class GgufWriter {
 public:
  void AddString(const std::string& key, const std::string& value);
  void AddUint32(const std::string& key, uint32_t value);
  void AddFloat32(const std::string& key, float value);
  void AddStringArray(const std::string& key, const std::vector<std::string>& values);
  void AddFloat32Array(const std::string& key, const std::vector<float>& values);
  void AddInt32Array(const std::string& key, const std::vector<int32_t>& values);
  // AddTensor keeps a float32 CPU copy of `tensor` (any shape, row-major order).
  void AddTensor(const std::string& name, const at::Tensor& tensor);
  absl::Status Write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;  // row-major order, as libtorch's
    at::Tensor data;             // float32, contiguous, CPU
  };
  void Key(const std::string& key, uint32_t type);
  std::string metadata_;  // encoded key/value pairs
  uint64_t metadata_count_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace deltaserve::tools
