#include "server/model/safetensors_tensor.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"

namespace deltaserve::model {
namespace {

absl::StatusOr<at::ScalarType> ScalarTypeFor(StoredDtype dtype) {
  switch (dtype) {
    case StoredDtype::kF64: return at::kDouble;
    case StoredDtype::kF32: return at::kFloat;
    case StoredDtype::kF16: return at::kHalf;
    case StoredDtype::kBF16: return at::kBFloat16;
    case StoredDtype::kI64: return at::kLong;
    case StoredDtype::kI32: return at::kInt;
    case StoredDtype::kI16: return at::kShort;
    case StoredDtype::kI8: return at::kChar;
    case StoredDtype::kU8: return at::kByte;
    case StoredDtype::kBool: return at::kBool;
  }
  return absl::InvalidArgumentError("unknown stored dtype");
}

}  // namespace

absl::StatusOr<StoredDtype> StoredDtypeFor(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return StoredDtype::kF64;
    case at::kFloat: return StoredDtype::kF32;
    case at::kHalf: return StoredDtype::kF16;
    case at::kBFloat16: return StoredDtype::kBF16;
    case at::kLong: return StoredDtype::kI64;
    case at::kInt: return StoredDtype::kI32;
    case at::kShort: return StoredDtype::kI16;
    case at::kChar: return StoredDtype::kI8;
    case at::kByte: return StoredDtype::kU8;
    case at::kBool: return StoredDtype::kBool;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype ", c10::toString(dtype), " cannot be stored in safetensors"));
  }
}

absl::StatusOr<at::Tensor> ToTensor(const StoredTensor& stored, at::ScalarType dtype,
                                    const at::Device& device) {
  ASSIGN_OR_RETURN(at::ScalarType source_type, ScalarTypeFor(stored.dtype));
  at::Tensor result;
  RETURN_IF_ERROR(common::CatchTorchErrors("converting a safetensors tensor", [&] {
    // The mapping is read-only and may be unaligned for the element type: copy the bytes into
    // an aligned CPU tensor first, then convert.
    at::Tensor raw = at::empty(stored.shape, at::TensorOptions().dtype(source_type));
    if (stored.byte_size > 0) std::memcpy(raw.data_ptr(), stored.data, stored.byte_size);
    result = raw.to(device, dtype);
  }));
  return result;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, at::Tensor>> sorted = tensors;
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) header["__metadata__"][key] = value;
  }
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const auto& [name, tensor] = sorted[i];
    if (i > 0 && sorted[i - 1].first == name) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name ", name));
    }
    ASSIGN_OR_RETURN(StoredDtype dtype, StoredDtypeFor(tensor.scalar_type()));
    at::Tensor cpu;
    RETURN_IF_ERROR(common::CatchTorchErrors("preparing a tensor for writing", [&] {
      cpu = tensor.detach().to(at::kCPU).contiguous();
    }));
    uint64_t bytes = static_cast<uint64_t>(cpu.numel()) * DtypeSize(dtype);
    header[name] = {{"dtype", DtypeName(dtype)},
                    {"shape", cpu.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(std::move(cpu));
  }
  std::string header_text = header.dump();
  while ((header_text.size() + 8) % 8 != 0) header_text.push_back(' ');
  std::string output;
  output.reserve(8 + header_text.size() + offset);
  uint64_t header_size = header_text.size();
  for (int i = 0; i < 8; ++i) output.push_back(static_cast<char>((header_size >> (8 * i)) & 0xff));
  output += header_text;
  for (const at::Tensor& tensor : contiguous) {
    output.append(static_cast<const char*>(tensor.data_ptr()),
                  static_cast<size_t>(tensor.numel() * tensor.element_size()));
  }
  return common::WriteFileAtomically(path, output);
}

}  // namespace deltaserve::model
