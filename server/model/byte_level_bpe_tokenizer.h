// ByteLevelBpeTokenizer: a Tokenizer over a Hugging Face tokenizer.json whose model is BPE
// with a byte-level pre-tokenizer (GPT-2, Llama 3, Qwen2). Encoding: split out added tokens,
// split the rest with the pre-tokenizer regex (PCRE2, Unicode properties), map each piece's
// bytes to the byte-level alphabet, apply merges by rank (or take the whole piece when
// ignore_merges is set and it is in the vocabulary). Normalizers are not applied (the
// supported families use none or NFC, which valid prompts almost always already are).
// Thread-safe: immutable after Create (regex match data is per call).
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/tokenizer.h"

namespace deltaserve::model {

class ByteLevelBpeTokenizer : public Tokenizer {
 public:
  // Create parses tokenizer.json text. Unsupported models or pre-tokenizers are rejected with
  // a message naming what was found.
  static absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> Create(const std::string& json);
  ~ByteLevelBpeTokenizer() override;

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override;
  std::string TokenBytes(int32_t id) const override;
  int32_t VocabSize() const override { return static_cast<int32_t>(token_bytes_.size()); }

  // TokenId returns the id of an exact token string (added tokens included), or -1.
  int32_t TokenId(const std::string& token) const;

 private:
  // Build does Create's work; it may throw nlohmann's exceptions on values of the wrong type,
  // which Create turns into INVALID_ARGUMENT.
  static absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> Build(const std::string& json);
  struct Regex;
  ByteLevelBpeTokenizer();
  absl::Status EncodePiece(std::string_view piece, std::vector<int32_t>& ids) const;

  std::unordered_map<std::string, int32_t> vocab_;      // byte-level token string -> id
  std::unordered_map<std::string, int32_t> merge_rank_;  // "left\0right" -> rank
  struct AddedToken {
    std::string content;
    int32_t id;
  };
  std::vector<AddedToken> added_tokens_;  // longest first
  std::vector<std::string> token_bytes_;  // id -> raw bytes ("" for special tokens)
  std::string byte_to_symbol_[256];       // byte -> UTF-8 of its byte-level character
  bool ignore_merges_ = false;
  std::unique_ptr<Regex> regex_;
};

}  // namespace deltaserve::model
