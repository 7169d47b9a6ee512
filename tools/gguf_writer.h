// GgufWriter: writes a GGUF file (version 3, the format llama.cpp reads; documented in ggml's
// docs/gguf.md): a header, typed metadata key/values, tensor descriptions, then the tensor data,
// each tensor aligned to 32 bytes. Tensors are F32, F16, or Q8_0 (ggml's 8-bit blocks: 32 values
// share one f16 scale, amax / 127, each value rounded to an int8; rows must be whole blocks).
// GGUF lists dimensions fastest-varying first, so a row-major [rows, columns] tensor is
// described as (columns, rows): AddTensor does that reversal. Collects everything in memory, then Write() writes the file. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/status.h"

namespace deltaserve::tools {

// ggml tensor types (their ids in the file).
enum class GgufTensorType : uint32_t { kF32 = 0, kF16 = 1, kQ8_0 = 8 };

class GgufWriter {
 public:
  void AddString(const std::string& key, const std::string& value);
  void AddUint32(const std::string& key, uint32_t value);
  void AddFloat32(const std::string& key, float value);
  void AddStringArray(const std::string& key, const std::vector<std::string>& values);
  void AddFloat32Array(const std::string& key, const std::vector<float>& values);
  void AddInt32Array(const std::string& key, const std::vector<int32_t>& values);
  // AddTensor keeps a CPU copy of `tensor` (any shape, row-major order) encoded as `type`;
  // INVALID_ARGUMENT for Q8_0 when the last dimension is not a multiple of 32.
  absl::Status AddTensor(const std::string& name, const at::Tensor& tensor,
                         GgufTensorType type = GgufTensorType::kF32);
  absl::Status Write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;  // row-major order, as libtorch's
    GgufTensorType type;
    at::Tensor data;             // the encoded bytes (any element type), contiguous, CPU
  };
  void Key(const std::string& key, uint32_t type);
  std::string metadata_;  // encoded key/value pairs
  uint64_t metadata_count_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace deltaserve::tools
