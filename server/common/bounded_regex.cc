#include "server/common/bounded_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"

namespace deltaserve::common {
namespace {

// Steps and nesting for one match: module names are tens of bytes, and real patterns need a few
// hundred steps on them.
constexpr uint32_t kMatchSteps = 100000;
constexpr uint32_t kMatchDepth = 1000;

}  // namespace

struct BoundedRegex::Code {
  pcre2_code* code = nullptr;
  pcre2_match_context* context = nullptr;
  ~Code() {
    pcre2_match_context_free(context);
    pcre2_code_free(code);
  }
};

absl::StatusOr<BoundedRegex> BoundedRegex::Compile(std::string_view pattern) {
  if (pattern.size() > kMaxPatternBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the pattern is longer than ", kMaxPatternBytes, " bytes"));
  }
  auto code = std::make_shared<Code>();
  int error = 0;
  PCRE2_SIZE offset = 0;
  code->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_ANCHORED | PCRE2_ENDANCHORED, &error, &offset, nullptr);
  if (code->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(
        absl::StrCat("the pattern does not compile: ", reinterpret_cast<const char*>(message), " at offset ", offset));
  }
  code->context = pcre2_match_context_create(nullptr);
  if (code->context == nullptr) return absl::ResourceExhaustedError("out of memory compiling a pattern");
  pcre2_set_match_limit(code->context, kMatchSteps);
  pcre2_set_depth_limit(code->context, kMatchDepth);
  BoundedRegex regex;
  regex.code_ = std::move(code);
  return regex;
}

bool BoundedRegex::FullMatch(std::string_view text) const {
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  if (match == nullptr) return false;
  const int result = pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, 0, match,
                                 code_->context);
  pcre2_match_data_free(match);
  return result >= 0;
}

}  // namespace deltaserve::common
