#include "tools/gguf_writer.h"

#include <fstream>

#include "absl/strings/str_cat.h"

namespace deltaserve::tools {
namespace {

// GGUF metadata value types and the ggml tensor type used here.
enum : uint32_t { kUint32 = 4, kInt32 = 5, kFloat32 = 6, kString = 8, kArray = 9 };
constexpr uint32_t kGgmlF32 = 0;
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

void GgufWriter::AddTensor(const std::string& name, const at::Tensor& tensor) {
  tensors_.push_back({name, tensor.sizes().vec(), tensor.to(at::kCPU, at::kFloat).contiguous()});
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
    Put<uint32_t>(header, kGgmlF32);
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
