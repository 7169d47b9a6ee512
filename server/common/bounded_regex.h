// BoundedRegex: a regular expression from untrusted input (adapter configs' target_modules and
// rank/alpha patterns), matched with PCRE2 under a bounded number of backtracking steps and
// depth, so that a pattern such as "(.*)*x" cannot hang the caller: a match that runs out of
// steps counts as no match. Patterns are Perl-compatible, which agrees with Python's `re` (what
// PEFT uses) on the syntax module patterns use. Thread-safe after Compile.
//   ASSIGN_OR_RETURN(BoundedRegex regex, BoundedRegex::Compile(".*\\.(q|v)_proj"));
//   bool targeted = regex.FullMatch("model.layers.0.self_attn.q_proj");
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace deltaserve::common {

class BoundedRegex {
 public:
  // The longest pattern accepted.
  static constexpr size_t kMaxPatternBytes = 1024;
  // Compile: INVALID_ARGUMENT for a pattern that is too long or does not compile, with PCRE2's
  // reason and offset.
  static absl::StatusOr<BoundedRegex> Compile(std::string_view pattern);
  // FullMatch: whether the pattern matches all of `text` (false too when the step bound ran out).
  bool FullMatch(std::string_view text) const;

 private:
  struct Code;
  std::shared_ptr<const Code> code_;
};

}  // namespace deltaserve::common
