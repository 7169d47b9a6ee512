#include "server/model/utf8_stream.h"

#include <cstdint>

namespace deltaserve::model {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";

// SequenceLength returns how many bytes the character starting with `lead` has, or 0 when
// `lead` cannot start one.
int SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// ValidContinuation checks byte `index` (1-based within the character) given the lead byte,
// including the overlong, surrogate and >U+10FFFF exclusions.
bool ValidContinuation(uint8_t lead, int index, uint8_t byte) {
  if (index == 1) {
    if (lead == 0xE0) return byte >= 0xA0 && byte <= 0xBF;
    if (lead == 0xED) return byte >= 0x80 && byte <= 0x9F;
    if (lead == 0xF0) return byte >= 0x90 && byte <= 0xBF;
    if (lead == 0xF4) return byte >= 0x80 && byte <= 0x8F;
  }
  return byte >= 0x80 && byte <= 0xBF;
}

// Decodes as much of `bytes` as is complete. Returns the number of bytes consumed; when
// `final` is false an incomplete but so-far-valid character at the end is left unconsumed.
size_t DecodeInto(std::string_view bytes, bool final, std::string& out) {
  size_t i = 0;
  while (i < bytes.size()) {
    uint8_t lead = static_cast<uint8_t>(bytes[i]);
    int length = SequenceLength(lead);
    if (length == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    int valid = 1;
    while (valid < length && i + valid < bytes.size() &&
           ValidContinuation(lead, valid, static_cast<uint8_t>(bytes[i + valid]))) {
      ++valid;
    }
    if (valid == length) {
      out.append(bytes.substr(i, length));
      i += length;
    } else if (i + valid == bytes.size() && !final) {
      break;  // incomplete so far: wait for more bytes
    } else {
      out += kReplacement;
      i += valid;
    }
  }
  return i;
}

}  // namespace

std::string Utf8StreamDecoder::Append(std::string_view bytes) {
  pending_.append(bytes);
  std::string out;
  size_t consumed = DecodeInto(pending_, /*final=*/false, out);
  pending_.erase(0, consumed);
  return out;
}

std::string Utf8StreamDecoder::Flush() {
  std::string out;
  DecodeInto(pending_, /*final=*/true, out);
  pending_.clear();
  return out;
}

std::string SanitizeUtf8(std::string_view bytes) {
  std::string out;
  DecodeInto(bytes, /*final=*/true, out);
  return out;
}

bool IsValidUtf8(std::string_view bytes) { return SanitizeUtf8(bytes) == bytes; }

}  // namespace deltaserve::model
