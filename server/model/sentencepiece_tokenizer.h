// SentencePieceTokenizer: a Tokenizer over a SentencePiece tokenizer.model (Llama 1/2,
// Mistral, the demo model). Byte-fallback pieces <0xAB> decode to their raw byte; "▁" decodes
// to a space; control and unknown pieces decode to nothing. Thread-safe (the processor is
// used through const methods only).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/model/sentencepiece_bridge.h"
#include "server/model/tokenizer.h"

namespace deltaserve::model {

class SentencePieceTokenizer : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Load(const std::string& path);
  ~SentencePieceTokenizer() override;

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override;
  std::string TokenBytes(int32_t id) const override;
  int32_t VocabSize() const override;

  // Ids the SentencePiece model itself declares (-1 when absent).
  int32_t ModelBosId() const;
  int32_t ModelEosId() const;

 private:
  SentencePieceTokenizer() = default;
  std::unique_ptr<sentencepiece_bridge::Processor> processor_;
  std::vector<std::string> token_bytes_;  // precomputed per id
};

}  // namespace deltaserve::model
