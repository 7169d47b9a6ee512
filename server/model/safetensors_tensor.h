// Conversion between safetensors storage and ATen tensors, and the safetensors writer.
// ToTensor copies a StoredTensor into a new tensor of the requested dtype on the requested
// device (F32/F16/BF16 sources; integer sources too). WriteSafetensors writes tensors (any
// device; copied to CPU contiguous) to path atomically (temp file, fsync, rename), with names
// sorted and the header padded to 8 bytes, so the same tensors always give the same bytes.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "server/model/safetensors_file.h"

namespace deltaserve::model {

absl::StatusOr<at::Tensor> ToTensor(const StoredTensor& stored, at::ScalarType dtype,
                                    const at::Device& device);

absl::StatusOr<StoredDtype> StoredDtypeFor(at::ScalarType dtype);

// TensorSpec: what WriteSafetensorsStreamed declares in the header before producing the data.
struct TensorSpec {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};

// WriteSafetensorsStreamed writes the same format as WriteSafetensors, asking `produce` for one
// tensor at a time, in the order of `specs` (the data's order in the file; the header lists them
// by name), each matching its spec, so that a file larger than memory can be written. Atomic as WriteSafetensors: nothing is left at `path` on failure.
absl::Status WriteSafetensorsStreamed(const std::string& path, std::vector<TensorSpec> specs,
                                     const std::function<absl::StatusOr<at::Tensor>(const TensorSpec&)>& produce,
                                     const std::map<std::string, std::string>& metadata = {});

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace deltaserve::model
