// Fuzzes the safetensors parser: any bytes either parse into tensors that lie inside the input
// without overlapping, or are refused with INVALID_ARGUMENT; never a crash or a read outside.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "server/model/safetensors_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A copy of exactly `size` bytes, so that AddressSanitizer sees any read past the end.
  std::vector<uint8_t> bytes(data, data + size);
  auto parsed = deltaserve::model::SafetensorsFile::Parse(bytes.data(), bytes.size(), "fuzz.safetensors");
  if (!parsed.ok()) {
    if (parsed.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  for (const auto& [name, tensor] : parsed->tensors()) {
    if (tensor.byte_size != tensor.NumElements() * deltaserve::model::DtypeSize(tensor.dtype)) std::abort();
    if (tensor.byte_size > 0) {
      if (tensor.data < bytes.data() || tensor.data + tensor.byte_size > bytes.data() + bytes.size()) std::abort();
      volatile uint8_t touch = tensor.data[0] ^ tensor.data[tensor.byte_size - 1];
      (void)touch;
    }
  }
  return 0;
}
