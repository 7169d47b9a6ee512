#include "server/model/tokenizer.h"

#include <algorithm>

#include "server/common/status_macros.h"
#include "server/model/utf8_stream.h"

namespace deltaserve::model {

bool Tokenizer::IsEos(int32_t id) const {
  const auto& ids = special_tokens_.eos_ids;
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodePrompt(std::string_view text) const {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, Encode(text));
  if (special_tokens_.add_bos && special_tokens_.bos_id.has_value()) {
    ids.insert(ids.begin(), *special_tokens_.bos_id);
  }
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (int32_t id : ids) bytes += TokenBytes(id);
  return SanitizeUtf8(bytes);
}

}  // namespace deltaserve::model
