#include "server/model/byte_level_bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/json_limits.h"
#include "server/common/status_macros.h"
#include "server/model/utf8_stream.h"

namespace deltaserve::model {
namespace {

using Json = nlohmann::json;

// Token ids are dense in real vocabularies (the largest have about 256k); ids beyond this bound
// would only make the id-to-bytes table huge.
constexpr int64_t kMaxVocabulary = int64_t{1} << 22;

// The GPT-2 pre-tokenizer pattern, used by ByteLevel pre-tokenizers with use_regex = true.
constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

std::string CodepointToUtf8(uint32_t codepoint) {
  std::string out;
  if (codepoint < 0x80) {
    out.push_back(static_cast<char>(codepoint));
  } else if (codepoint < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (codepoint >> 6)));
    out.push_back(static_cast<char>(0x80 | (codepoint & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (codepoint >> 12)));
    out.push_back(static_cast<char>(0x80 | ((codepoint >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (codepoint & 0x3F)));
  }
  return out;
}

// GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68
// bytes are mapped in order to U+0100 upwards, so every byte is one visible character.
void BuildByteAlphabet(std::string (&byte_to_symbol)[256]) {
  int next = 0;
  for (int byte = 0; byte < 256; ++byte) {
    bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                     (byte >= 0xAE && byte <= 0xFF);
    byte_to_symbol[byte] = CodepointToUtf8(printable ? byte : 256 + next++);
  }
}

size_t Utf8Length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  return 4;
}

// Member: object[key], or null when `object` is not an object or lacks the key (nlohmann's
// const operator[] must not be asked for a missing key).
const Json& Member(const Json& object, const char* key) {
  static const Json kNull;
  if (!object.is_object()) return kNull;
  auto found = object.find(key);
  return found == object.end() ? kNull : *found;
}

// Finds the pre-tokenizer regex in a tokenizer.json "pre_tokenizer" entry.
absl::StatusOr<std::string> PreTokenizerPattern(const Json& pre_tokenizer) {
  if (pre_tokenizer.is_null()) return std::string(kGpt2Pattern);
  std::string type = pre_tokenizer.value("type", std::string());
  if (type == "ByteLevel") {
    return pre_tokenizer.value("use_regex", true) ? std::string(kGpt2Pattern) : std::string();
  }
  if (type == "Split") {
    const Json& pattern = Member(pre_tokenizer, "pattern");
    if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
      return pattern["Regex"].get<std::string>();
    }
    if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
      std::string literal = pattern["String"].get<std::string>();
      return absl::StrCat("\\Q", literal, "\\E");
    }
    return absl::InvalidArgumentError("tokenizer.json: Split pre-tokenizer without a pattern");
  }
  if (type == "Sequence") {
    std::string found;
    const Json& items = Member(pre_tokenizer, "pretokenizers");
    if (!items.is_array()) return absl::InvalidArgumentError("tokenizer.json: Sequence pre-tokenizer without a list");
    for (const Json& item : items) {
      ASSIGN_OR_RETURN(std::string pattern, PreTokenizerPattern(item));
      if (!pattern.empty()) {
        if (!found.empty()) {
          return absl::InvalidArgumentError(
              "tokenizer.json: more than one regex pre-tokenizer is not supported");
        }
        found = pattern;
      }
    }
    return found;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "tokenizer.json: pre-tokenizer \"", type,
      "\" is not supported (byte-level BPE with ByteLevel/Split pre-tokenizers only; for "
      "SentencePiece models provide tokenizer.model)"));
}

}  // namespace

struct ByteLevelBpeTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code != nullptr) pcre2_code_free(code);
  }
};

ByteLevelBpeTokenizer::ByteLevelBpeTokenizer() = default;
ByteLevelBpeTokenizer::~ByteLevelBpeTokenizer() = default;

absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> ByteLevelBpeTokenizer::Create(
    const std::string& text) {
  try {
    return Build(text);
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json has a value of the wrong type: ", error.what()));
  }
}

absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> ByteLevelBpeTokenizer::Build(
    const std::string& text) {
  // Real tokenizer.json files nest a few levels; parsing deeper input would only risk the stack.
  if (!common::JsonNestingWithin(text, 64)) return absl::InvalidArgumentError("tokenizer.json is nested too deeply");
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json is not a JSON object");
  }
  const Json& model = json["model"];
  if (!model.is_object() || model.value("type", std::string()) != "BPE") {
    return absl::InvalidArgumentError(
        "tokenizer.json: only BPE models are supported (model.type must be \"BPE\")");
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: model.vocab must be an object");
  }
  std::unique_ptr<ByteLevelBpeTokenizer> tokenizer(new ByteLevelBpeTokenizer());
  BuildByteAlphabet(tokenizer->byte_to_symbol_);
  std::unordered_map<std::string, uint8_t> symbol_to_byte;
  for (int byte = 0; byte < 256; ++byte) symbol_to_byte[tokenizer->byte_to_symbol_[byte]] = byte;

  int32_t max_id = -1;
  for (auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() >= kMaxVocabulary) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: vocab entry \"", token, "\" has an invalid id"));
    }
    tokenizer->vocab_[token] = id.get<int32_t>();
    max_id = std::max(max_id, id.get<int32_t>());
  }
  tokenizer->ignore_merges_ = model.value("ignore_merges", false);
  if (model.contains("merges") && model["merges"].is_array()) {
    int32_t rank = 0;
    for (const Json& merge : model["merges"]) {
      std::string left, right;
      if (merge.is_string()) {
        std::string pair = merge.get<std::string>();
        size_t space = pair.find(' ');
        if (space == std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("tokenizer.json: merge \"", pair, "\" is not \"left right\""));
        }
        left = pair.substr(0, space);
        right = pair.substr(space + 1);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                 merge[1].is_string()) {
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        return absl::InvalidArgumentError("tokenizer.json: a merge is neither a string nor a pair");
      }
      tokenizer->merge_rank_.emplace(left + std::string(1, '\0') + right, rank++);
    }
  }
  std::vector<std::pair<int32_t, bool>> added;  // id, special
  if (json.contains("added_tokens") && json["added_tokens"].is_array()) {
    for (const Json& token : json["added_tokens"]) {
      if (!token.is_object() || !token.contains("id") || !token["id"].is_number_integer() ||
          !token.contains("content") || !token["content"].is_string()) {
        return absl::InvalidArgumentError("tokenizer.json: an added token lacks id or content");
      }
      int32_t id = token["id"].get<int32_t>();
      if (id < 0 || id >= kMaxVocabulary) {
        return absl::InvalidArgumentError("tokenizer.json: an added token has an invalid id");
      }
      std::string content = token["content"].get<std::string>();
      if (content.empty()) continue;
      tokenizer->added_tokens_.push_back({content, id});
      max_id = std::max(max_id, id);
      added.push_back({id, token.value("special", false)});
    }
  }
  std::sort(tokenizer->added_tokens_.begin(), tokenizer->added_tokens_.end(),
            [](const AddedToken& a, const AddedToken& b) {
              return a.content.size() > b.content.size();
            });

  tokenizer->token_bytes_.assign(max_id + 1, std::string());
  for (const auto& [token, id] : tokenizer->vocab_) {
    std::string bytes;
    for (size_t i = 0; i < token.size();) {
      size_t length = std::min(Utf8Length(static_cast<uint8_t>(token[i])), token.size() - i);
      auto it = symbol_to_byte.find(token.substr(i, length));
      if (it == symbol_to_byte.end()) {
        bytes.append(token, i, length);  // not byte-level: keep the text as is
      } else {
        bytes.push_back(static_cast<char>(it->second));
      }
      i += length;
    }
    tokenizer->token_bytes_[id] = bytes;
  }
  for (const AddedToken& token : tokenizer->added_tokens_) {
    bool special = false;
    for (const auto& [id, is_special] : added) {
      if (id == token.id) special = is_special;
    }
    tokenizer->token_bytes_[token.id] = special ? std::string() : token.content;
  }

  ASSIGN_OR_RETURN(std::string pattern, PreTokenizerPattern(json["pre_tokenizer"]));
  if (!pattern.empty()) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    tokenizer->regex_ = std::make_unique<Regex>();
    tokenizer->regex_->code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                      PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
    if (tokenizer->regex_->code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error_code, message, sizeof(message));
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: pre-tokenizer regex does not compile at offset ",
                       error_offset, ": ", reinterpret_cast<const char*>(message)));
    }
  }
  return tokenizer;
}

int32_t ByteLevelBpeTokenizer::TokenId(const std::string& token) const {
  for (const AddedToken& added : added_tokens_) {
    if (added.content == token) return added.id;
  }
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

std::string ByteLevelBpeTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(token_bytes_.size())) return "";
  return token_bytes_[id];
}

absl::Status ByteLevelBpeTokenizer::EncodePiece(std::string_view piece,
                                                std::vector<int32_t>& ids) const {
  std::vector<std::string> symbols;
  std::string whole;
  for (char byte : piece) {
    symbols.push_back(byte_to_symbol_[static_cast<uint8_t>(byte)]);
    whole += symbols.back();
  }
  if (ignore_merges_) {
    auto it = vocab_.find(whole);
    if (it != vocab_.end()) {
      ids.push_back(it->second);
      return absl::OkStatus();
    }
  }
  // Repeatedly merge the adjacent pair with the lowest rank (all its occurrences, left to
  // right), as the reference BPE does.
  std::string key;
  while (symbols.size() > 1) {
    int32_t best_rank = std::numeric_limits<int32_t>::max();
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      key = symbols[i];
      key.push_back('\0');
      key += symbols[i + 1];
      auto it = merge_rank_.find(key);
      if (it != merge_rank_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == std::numeric_limits<int32_t>::max()) break;
    const std::string left = symbols[best];
    const std::string right = symbols[best + 1];
    std::vector<std::string> merged;
    merged.reserve(symbols.size());
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
        merged.push_back(left + right);
        ++i;
      } else {
        merged.push_back(symbols[i]);
      }
    }
    symbols.swap(merged);
  }
  for (const std::string& symbol : symbols) {
    auto it = vocab_.find(symbol);
    if (it == vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer has no token for byte-level symbol \"", symbol, "\""));
    }
    ids.push_back(it->second);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ByteLevelBpeTokenizer::Encode(std::string_view text) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("text is not valid UTF-8");
  std::vector<int32_t> ids;
  auto encode_plain = [&](std::string_view segment) -> absl::Status {
    if (segment.empty()) return absl::OkStatus();
    if (regex_ == nullptr) return EncodePiece(segment, ids);
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(regex_->code, nullptr);
    size_t offset = 0;
    absl::Status status;
    while (offset < segment.size() && status.ok()) {
      int rc = pcre2_match(regex_->code, reinterpret_cast<PCRE2_SPTR>(segment.data()),
                           segment.size(), offset, PCRE2_NO_UTF_CHECK, match, nullptr);
      if (rc < 0) {
        status = EncodePiece(segment.substr(offset), ids);  // no more matches: the rest
        offset = segment.size();
        break;
      }
      PCRE2_SIZE* vector = pcre2_get_ovector_pointer(match);
      size_t begin = vector[0], end = vector[1];
      if (begin > offset) status = EncodePiece(segment.substr(offset, begin - offset), ids);
      if (!status.ok()) break;
      if (end == begin) {  // empty match: step over one character
        end = begin + Utf8Length(static_cast<uint8_t>(segment[begin]));
        status = EncodePiece(segment.substr(begin, end - begin), ids);
      } else {
        status = EncodePiece(segment.substr(begin, end - begin), ids);
      }
      offset = end;
    }
    pcre2_match_data_free(match);
    return status;
  };
  size_t start = 0, position = 0;
  while (position < text.size()) {
    const AddedToken* found = nullptr;
    for (const AddedToken& token : added_tokens_) {
      if (text.compare(position, token.content.size(), token.content) == 0) {
        found = &token;
        break;
      }
    }
    if (found == nullptr) {
      ++position;
      continue;
    }
    RETURN_IF_ERROR(encode_plain(text.substr(start, position - start)));
    ids.push_back(found->id);
    position += found->content.size();
    start = position;
  }
  RETURN_IF_ERROR(encode_plain(text.substr(start)));
  return ids;
}

}  // namespace deltaserve::model
