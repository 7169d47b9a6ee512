#include "server/model/sentencepiece_tokenizer.h"

#include "absl/strings/str_cat.h"
#include "server/model/utf8_stream.h"

namespace deltaserve::model {
namespace {

constexpr char kSpaceSymbol[] = "\xE2\x96\x81";  // U+2581 "▁"

std::string PieceToBytes(const std::string& piece) {
  std::string out;
  size_t i = 0;
  while (i < piece.size()) {
    if (piece.compare(i, 3, kSpaceSymbol) == 0) {
      out.push_back(' ');
      i += 3;
    } else {
      out.push_back(piece[i]);
      ++i;
    }
  }
  return out;
}

}  // namespace

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Load(
    const std::string& path) {
  std::unique_ptr<SentencePieceTokenizer> tokenizer(new SentencePieceTokenizer());
  std::string error;
  tokenizer->processor_ = sentencepiece_bridge::Processor::Load(path, &error);
  if (tokenizer->processor_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load SentencePiece model ", path, ": ", error));
  }
  const int size = tokenizer->processor_->PieceSize();
  tokenizer->token_bytes_.resize(size);
  for (int id = 0; id < size; ++id) {
    const auto& p = *tokenizer->processor_;
    if (p.IsControl(id) || p.IsUnknown(id) || p.IsUnused(id)) continue;
    const std::string& piece = p.IdToPiece(id);
    if (p.IsByte(id)) {
      // "<0xAB>"
      tokenizer->token_bytes_[id] =
          std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    } else {
      tokenizer->token_bytes_[id] = PieceToBytes(piece);
    }
  }
  return tokenizer;
}

absl::StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(std::string_view text) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("text is not valid UTF-8");
  std::vector<int> ids;
  std::string error;
  if (!processor_->Encode(std::string(text), &ids, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenization failed: ", error));
  }
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string SentencePieceTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(token_bytes_.size())) return "";
  return token_bytes_[id];
}

int32_t SentencePieceTokenizer::VocabSize() const { return processor_->PieceSize(); }
int32_t SentencePieceTokenizer::ModelBosId() const { return processor_->BosId(); }
int32_t SentencePieceTokenizer::ModelEosId() const { return processor_->EosId(); }

}  // namespace deltaserve::model
