#include "server/model/safetensors_tensor.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
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

absl::Status WriteSafetensorsStreamed(const std::string& path, std::vector<TensorSpec> specs,
                                     const std::function<absl::StatusOr<at::Tensor>(const TensorSpec&)>& produce,
                                     const std::map<std::string, std::string>& metadata) {
  // Data in the order given; header entries sorted by name, so the same tensors in the same
  // order always give the same bytes.
  std::map<std::string, nlohmann::ordered_json> entries;
  uint64_t offset = 0;
  for (const TensorSpec& spec : specs) {
    ASSIGN_OR_RETURN(StoredDtype dtype, StoredDtypeFor(spec.dtype));
    uint64_t elements = 1;
    for (int64_t size : spec.shape) elements *= static_cast<uint64_t>(size);
    const uint64_t bytes = elements * DtypeSize(dtype);
    auto [it, inserted] = entries.emplace(
        spec.name, nlohmann::ordered_json{{"dtype", DtypeName(dtype)},
                                          {"shape", spec.shape},
                                          {"data_offsets", {offset, offset + bytes}}});
    if (!inserted) return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name ", spec.name));
    offset += bytes;
  }
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) header["__metadata__"][key] = value;
  }
  for (auto& [name, entry] : entries) header[name] = std::move(entry);
  std::string header_text = header.dump();
  while ((header_text.size() + 8) % 8 != 0) header_text.push_back(' ');
  std::string prefix;
  const uint64_t header_size = header_text.size();
  for (int i = 0; i < 8; ++i) prefix.push_back(static_cast<char>((header_size >> (8 * i)) & 0xff));
  prefix += header_text;

  const std::string temp = path + ".tmp";
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(temp.c_str(), "wb"), &std::fclose);
  if (file == nullptr) return absl::InternalError(absl::StrCat("cannot create ", temp));
  auto write = [&](const void* data, size_t size) {
    return size == 0 || std::fwrite(data, 1, size, file.get()) == size;
  };
  absl::Status status = write(prefix.data(), prefix.size())
                            ? absl::OkStatus()
                            : absl::InternalError(absl::StrCat("cannot write ", temp));
  for (size_t i = 0; status.ok() && i < specs.size(); ++i) {
    absl::StatusOr<at::Tensor> tensor = produce(specs[i]);
    if (!tensor.ok()) {
      status = tensor.status();
      break;
    }
    at::Tensor cpu;
    status = common::CatchTorchErrors("preparing a tensor for writing", [&] {
      cpu = tensor->detach().to(at::kCPU).contiguous();
    });
    if (status.ok() && (cpu.scalar_type() != specs[i].dtype || cpu.sizes() != at::IntArrayRef(specs[i].shape))) {
      status = absl::InternalError(absl::StrCat("tensor ", specs[i].name, " does not have the declared dtype and shape"));
    }
    if (status.ok() && !write(cpu.data_ptr(), static_cast<size_t>(cpu.nbytes()))) {
      status = absl::InternalError(absl::StrCat("cannot write ", temp));
    }
  }
  if (status.ok() && std::fflush(file.get()) != 0) status = absl::InternalError(absl::StrCat("cannot write ", temp));
  file.reset();
  if (status.ok()) status = common::SyncPath(temp);
  if (status.ok() && std::rename(temp.c_str(), path.c_str()) != 0) {
    status = absl::InternalError(absl::StrCat("cannot rename ", temp, " to ", path));
  }
  if (!status.ok()) std::remove(temp.c_str());
  return status;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  // Data in name order too, as this writer always laid it out.
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [name, tensor] : tensors) {
    if (!by_name.emplace(name, &tensor).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name ", name));
    }
  }
  std::vector<TensorSpec> specs;
  for (const auto& [name, tensor] : by_name) specs.push_back({name, tensor->scalar_type(), tensor->sizes().vec()});
  return WriteSafetensorsStreamed(
      path, std::move(specs),
      [&by_name](const TensorSpec& spec) -> absl::StatusOr<at::Tensor> { return *by_name.at(spec.name); },
      metadata);
}

}  // namespace deltaserve::model
