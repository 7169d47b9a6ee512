// Fuzzes the tokenizer.json loader (byte-level BPE): the input is a tokenizer.json, optionally
// followed by a NUL byte and a text to encode. Whatever loads must encode that text (or refuse
// it with INVALID_ARGUMENT) into ids below its vocabulary size, and decode them again; never a
// crash, an exception or a hang.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "server/model/byte_level_bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const std::string json = input.substr(0, split);
  const std::string text = split == std::string::npos ? "hello world é 12345 <|end|>" : input.substr(split + 1);
  auto tokenizer = deltaserve::model::ByteLevelBpeTokenizer::Create(json);
  if (!tokenizer.ok()) return 0;
  auto ids = (*tokenizer)->Encode(text);
  if (!ids.ok()) {
    if (ids.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  for (int32_t id : *ids) {
    if (id < 0 || id >= (*tokenizer)->VocabSize()) std::abort();
  }
  (void)(*tokenizer)->Decode(*ids);
  return 0;
}
