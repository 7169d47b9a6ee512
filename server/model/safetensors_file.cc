#include "server/model/safetensors_file.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/json_limits.h"
#include "server/common/status_macros.h"

namespace deltaserve::model {
namespace {

using Json = nlohmann::json;

struct DtypeEntry {
  const char* name;
  StoredDtype dtype;
  int64_t size;
};

constexpr DtypeEntry kDtypes[] = {
    {"F64", StoredDtype::kF64, 8}, {"F32", StoredDtype::kF32, 4}, {"F16", StoredDtype::kF16, 2},
    {"BF16", StoredDtype::kBF16, 2}, {"I64", StoredDtype::kI64, 8}, {"I32", StoredDtype::kI32, 4},
    {"I16", StoredDtype::kI16, 2}, {"I8", StoredDtype::kI8, 1}, {"U8", StoredDtype::kU8, 1},
    {"BOOL", StoredDtype::kBool, 1},
};


}  // namespace

int64_t DtypeSize(StoredDtype dtype) {
  for (const DtypeEntry& entry : kDtypes) {
    if (entry.dtype == dtype) return entry.size;
  }
  return 0;
}

const char* DtypeName(StoredDtype dtype) {
  for (const DtypeEntry& entry : kDtypes) {
    if (entry.dtype == dtype) return entry.name;
  }
  return "?";
}

int64_t StoredTensor::NumElements() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(common::MappedFile mapping, common::MappedFile::Open(path));
  ASSIGN_OR_RETURN(SafetensorsFile file, Parse(mapping.data(), mapping.size(), path));
  file.mapping_ = std::move(mapping);
  return file;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(const uint8_t* data, size_t size,
                                                       const std::string& name) {
  auto invalid = [&name](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", parts...));
  };
  if (size < 8) return invalid("file is ", size, " bytes, too short for a safetensors header");
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | data[i];
  if (header_size > kMaxHeaderBytes) {
    return invalid("header length ", header_size, " exceeds the limit of ", kMaxHeaderBytes);
  }
  if (header_size > size - 8) {
    return invalid("header length ", header_size, " runs past the end of the file (",
                   size, " bytes): the file is truncated or not safetensors");
  }
  const char* header = reinterpret_cast<const char*>(data + 8);
  if (header_size == 0 || header[0] != '{') return invalid("header is not a JSON object");
  // A safetensors header is never deeper than 3.
  if (!common::JsonNestingWithin(std::string_view(header, header_size), 4)) {
    return invalid("header JSON is nested too deeply");
  }
  Json json = Json::parse(header, header + header_size, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return invalid("header is not valid JSON");

  SafetensorsFile file;
  file.path_ = name;
  const uint8_t* buffer = data + 8 + header_size;
  const uint64_t buffer_size = size - 8 - header_size;
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (auto& [key, value] : json.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return invalid("__metadata__ must be an object of strings");
      for (auto& [meta_key, meta_value] : value.items()) {
        if (!meta_value.is_string()) return invalid("__metadata__.", meta_key, " is not a string");
        file.metadata_[meta_key] = meta_value.get<std::string>();
      }
      continue;
    }
    if (!value.is_object() || value.size() != 3 || !value.contains("dtype") ||
        !value.contains("shape") || !value.contains("data_offsets")) {
      return invalid("tensor \"", key, "\" must have exactly dtype, shape and data_offsets");
    }
    const Json& dtype_json = value["dtype"];
    if (!dtype_json.is_string()) return invalid("tensor \"", key, "\": dtype is not a string");
    std::string dtype_name = dtype_json.get<std::string>();
    const DtypeEntry* dtype = nullptr;
    for (const DtypeEntry& entry : kDtypes) {
      if (dtype_name == entry.name) dtype = &entry;
    }
    if (dtype == nullptr) return invalid("tensor \"", key, "\": unknown dtype \"", dtype_name, "\"");
    StoredTensor tensor;
    tensor.dtype = dtype->dtype;
    const Json& shape_json = value["shape"];
    if (!shape_json.is_array() || shape_json.size() > 8) {
      return invalid("tensor \"", key, "\": shape must be an array of at most 8 dimensions");
    }
    uint64_t elements = 1;
    for (const Json& dim : shape_json) {
      if (!dim.is_number_unsigned()) {
        return invalid("tensor \"", key, "\": shape entries must be non-negative integers");
      }
      uint64_t extent = dim.get<uint64_t>();
      if (extent != 0 && elements > std::numeric_limits<uint64_t>::max() / 8 / extent) {
        return invalid("tensor \"", key, "\": shape is absurdly large");
      }
      elements *= extent;
      tensor.shape.push_back(static_cast<int64_t>(extent));
    }
    const Json& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return invalid("tensor \"", key, "\": data_offsets must be two non-negative integers");
    }
    uint64_t begin = offsets[0].get<uint64_t>();
    uint64_t end = offsets[1].get<uint64_t>();
    if (begin > end || end > buffer_size) {
      return invalid("tensor \"", key, "\": data_offsets [", begin, ", ", end,
                     ") lie outside the data buffer of ", buffer_size, " bytes");
    }
    uint64_t expected = elements * static_cast<uint64_t>(dtype->size);
    if (end - begin != expected) {
      return invalid("tensor \"", key, "\": data_offsets span ", end - begin,
                     " bytes but dtype and shape need ", expected);
    }
    tensor.data = buffer + begin;
    tensor.byte_size = static_cast<int64_t>(expected);
    auto [it, inserted] = file.tensors_.emplace(key, std::move(tensor));
    ranges.push_back({begin, end, &it->first});
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return invalid("tensors \"", *ranges[i - 1].name, "\" and \"", *ranges[i].name,
                     "\" overlap in the data buffer");
    }
  }
  return file;
}

const StoredTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace deltaserve::model
