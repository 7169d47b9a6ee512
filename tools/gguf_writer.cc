#include "tools/gguf_writer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include <c10/util/Half.h>

#include "absl/strings/str_cat.h"

namespace deltaserve::tools {
namespace {

// GGUF metadata value types.
enum : uint32_t { kUint32 = 4, kInt32 = 5, kFloat32 = 6, kString = 8, kArray = 9 };
constexpr uint64_t kAlignment = 32;

template <typename T>
void Put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(value));
}

void PutString(std::string& out, const std::string& value) {
  Put<uint64_t>(out, value.size());
  out += value;
}

uint64_t Aligned(uint64_t offset) { return (offset + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

void GgufWriter::Key(const std::string& key, uint32_t type) {
  PutString(metadata_, key);
  Put<uint32_t>(metadata_, type);
  ++metadata_count_;
}

void GgufWriter::AddString(const std::string& key, const std::string& value) {
  Key(key, kString);
  PutString(metadata_, value);
}

void GgufWriter::AddUint32(const std::string& key, uint32_t value) {
  Key(key, kUint32);
  Put(metadata_, value);
}

void GgufWriter::AddFloat32(const std::string& key, float value) {
  Key(key, kFloat32);
  Put(metadata_, value);
}

void GgufWriter::AddStringArray(const std::string& key, const std::vector<std::string>& values) {
  Key(key, kArray);
  Put<uint32_t>(metadata_, kString);
  Put<uint64_t>(metadata_, values.size());
  for (const std::string& value : values) PutString(metadata_, value);
}

void GgufWriter::AddFloat32Array(const std::string& key, const std::vector<float>& values) {
  Key(key, kArray);
  Put<uint32_t>(metadata_, kFloat32);
  Put<uint64_t>(metadata_, values.size());
  for (float value : values) Put(metadata_, value);
}

void GgufWriter::AddInt32Array(const std::string& key, const std::vector<int32_t>& values) {
  Key(key, kArray);
  Put<uint32_t>(metadata_, kInt32);
  Put<uint64_t>(metadata_, values.size());
  for (int32_t value : values) Put(metadata_, value);
}

absl::Status GgufWriter::AddTensor(const std::string& name, const at::Tensor& tensor, GgufTensorType type) {
  const at::Tensor values = tensor.to(at::kCPU, at::kFloat).contiguous();
  switch (type) {
    case GgufTensorType::kF32:
      tensors_.push_back({name, tensor.sizes().vec(), type, values});
      return absl::OkStatus();
    case GgufTensorType::kF16:
      tensors_.push_back({name, tensor.sizes().vec(), type, values.to(at::kHalf)});
      return absl::OkStatus();
    case GgufTensorType::kQ8_0:
      break;
  }
  constexpr int64_t kBlock = 32;
  constexpr int64_t kBlockBytes = 2 + kBlock;  // f16 scale, then 32 int8 values
  if (tensor.dim() == 0 || tensor.size(-1) % kBlock != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": Q8_0 needs rows that are a multiple of 32 values"));
  }
  const int64_t blocks = values.numel() / kBlock;
  at::Tensor encoded = at::empty({blocks * kBlockBytes}, at::kByte);
  const float* in = values.data_ptr<float>();
  uint8_t* out = encoded.data_ptr<uint8_t>();
  for (int64_t block = 0; block < blocks; ++block, in += kBlock, out += kBlockBytes) {
    float largest = 0;
    for (int64_t i = 0; i < kBlock; ++i) largest = std::max(largest, std::abs(in[i]));
    const float scale = largest / 127.0f;
    const float inverse = scale != 0 ? 1.0f / scale : 0.0f;
    const uint16_t half_scale = c10::Half(scale).x;
    std::memcpy(out, &half_scale, 2);
    for (int64_t i = 0; i < kBlock; ++i) out[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(in[i] * inverse)));
  }
  tensors_.push_back({name, tensor.sizes().vec(), type, encoded});
  return absl::OkStatus();
}

absl::Status GgufWriter::Write(const std::string& path) const {
  std::string header;
  Put<uint32_t>(header, 0x46554747);  // "GGUF"
  Put<uint32_t>(header, 3);
  Put<uint64_t>(header, tensors_.size());
  Put<uint64_t>(header, metadata_count_);
  header += metadata_;
  uint64_t offset = 0;
  for (const Tensor& tensor : tensors_) {
    PutString(header, tensor.name);
    Put<uint32_t>(header, static_cast<uint32_t>(tensor.shape.size()));
    for (auto it = tensor.shape.rbegin(); it != tensor.shape.rend(); ++it) Put<uint64_t>(header, *it);
    Put<uint32_t>(header, static_cast<uint32_t>(tensor.type));
    Put<uint64_t>(header, offset);
    offset = Aligned(offset + tensor.data.nbytes());
  }
  header.resize(Aligned(header.size()), '\0');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  const std::string padding(kAlignment, '\0');
  for (const Tensor& tensor : tensors_) {
    const uint64_t bytes = tensor.data.nbytes();
    out.write(static_cast<const char*>(tensor.data.data_ptr()), static_cast<std::streamsize>(bytes));
    out.write(padding.data(), static_cast<std::streamsize>(Aligned(bytes) - bytes));
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("could not write ", path));
  return absl::OkStatus();
}

}  // namespace deltaserve::tools
