// Conversion between safetensors storage and ATen tensors, and the safetensors writer.
// ToTensor copies a StoredTensor into a new tensor of the requested dtype on the requested
// device (F32/F16/BF16 sources; integer sources too). WriteSafetensors writes tensors (any
// device; copied to CPU contiguous) to path atomically (temp file, fsync, rename), with names
// sorted and the header padded to 8 bytes, so the same tensors always give the same bytes.
#pragma once

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

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace deltaserve::model
