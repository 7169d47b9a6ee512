// Tokenizer: text <-> token ids for one model. Implementations: SentencePieceTokenizer
// (tokenizer.model) and ByteLevelBpeTokenizer (Hugging Face tokenizer.json, GPT-2 / Llama-3 /
// Qwen2 style). LoadTokenizer (tokenizer_loader.h) picks one for a model directory.
//
// TokenBytes(id) is the exact byte string a token contributes to decoded text (special tokens
// contribute nothing), so decoded text is the concatenation of TokenBytes; bytes of a
// multi-byte UTF-8 character may be split across tokens (see Utf8StreamDecoder).
// All methods are const and thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace deltaserve::model {

struct SpecialTokens {
  std::optional<int32_t> bos_id;
  std::vector<int32_t> eos_ids;
  // Whether Encode for a prompt prepends bos_id (tokenizer_config.json add_bos_token, etc.).
  bool add_bos = false;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encode returns the ids of `text` without BOS; INVALID_ARGUMENT for text that is not UTF-8.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;
  virtual std::string TokenBytes(int32_t id) const = 0;
  virtual int32_t VocabSize() const = 0;

  const SpecialTokens& special_tokens() const { return special_tokens_; }
  void set_special_tokens(SpecialTokens tokens) { special_tokens_ = std::move(tokens); }
  bool IsEos(int32_t id) const;

  // EncodePrompt is Encode plus BOS when the model expects it.
  absl::StatusOr<std::vector<int32_t>> EncodePrompt(std::string_view text) const;
  // Decode concatenates TokenBytes and replaces invalid UTF-8 with U+FFFD.
  std::string Decode(const std::vector<int32_t>& ids) const;

 private:
  SpecialTokens special_tokens_;
};

}  // namespace deltaserve::model
