#include "server/engine/logit_adjustments.h"

#include <algorithm>
#include <limits>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"

namespace deltaserve::engine {
namespace {

absl::Status CheckTokenIds(const char* what, const std::vector<int32_t>& ids, int64_t vocab_size) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckLogitAdjustments(const SamplingOptions& options, int64_t vocab_size) {
  if (!(options.repetition_penalty > 0.0f && options.repetition_penalty <= 100.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty ", options.repetition_penalty, " is outside (0, 100] (1 = off)"));
  }
  if (!(options.presence_penalty >= -2.0f && options.presence_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("presence_penalty ", options.presence_penalty, " is outside [-2, 2]"));
  }
  if (!(options.frequency_penalty >= -2.0f && options.frequency_penalty <= 2.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("frequency_penalty ", options.frequency_penalty, " is outside [-2, 2]"));
  }
  if (!(options.min_p >= 0.0f && options.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p ", options.min_p, " is outside [0, 1]"));
  }
  for (const auto& [id, bias] : options.logit_bias) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("logit_bias: token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
    if (!(bias >= -100.0f && bias <= 100.0f)) {
      return absl::InvalidArgumentError(absl::StrCat("logit_bias of token ", id, ": ", bias, " is outside [-100, 100]"));
    }
  }
  RETURN_IF_ERROR(CheckTokenIds("banned tokens", options.banned_token_ids, vocab_size));
  RETURN_IF_ERROR(CheckTokenIds("allowed tokens", options.allowed_token_ids, vocab_size));
  if (static_cast<int64_t>(options.bad_words.size()) > kMaxBadWords) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", kMaxBadWords, " bad words are allowed, got ", options.bad_words.size()));
  }
  for (const std::vector<int32_t>& word : options.bad_words) {
    if (word.empty() || static_cast<int64_t>(word.size()) > kMaxBadWordTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("each bad word must be 1 to ", kMaxBadWordTokens, " tokens, got ", word.size()));
    }
    RETURN_IF_ERROR(CheckTokenIds("bad words", word, vocab_size));
  }
  if (!options.allowed_token_ids.empty()) {
    const std::unordered_set<int32_t> banned(options.banned_token_ids.begin(), options.banned_token_ids.end());
    bool any = false;
    for (int32_t id : options.allowed_token_ids) any = any || banned.count(id) == 0;
    if (!any) return absl::InvalidArgumentError("every allowed token is also banned: nothing could be generated");
  }
  return absl::OkStatus();
}

bool AdjustsLogits(const SamplingOptions& options) {
  return options.repetition_penalty != 1.0f || options.presence_penalty != 0.0f || options.frequency_penalty != 0.0f ||
         !options.logit_bias.empty() || !options.banned_token_ids.empty() || !options.allowed_token_ids.empty() ||
         !options.bad_words.empty();
}

void AdjustLogits(const SamplingOptions& options, const TokenHistory& history, float* logits, int64_t vocab_size) {
  if (options.repetition_penalty != 1.0f) {
    const std::unordered_set<int32_t> seen(history.tokens, history.tokens + history.count);
    for (int32_t token : seen) {
      float& logit = logits[token];
      logit = logit > 0 ? logit / options.repetition_penalty : logit * options.repetition_penalty;
    }
  }
  if (options.presence_penalty != 0.0f || options.frequency_penalty != 0.0f) {
    std::unordered_map<int32_t, int64_t> counts;
    for (int64_t i = history.prompt_tokens; i < history.count; ++i) ++counts[history.tokens[i]];
    for (const auto& [token, count] : counts) {
      logits[token] -= static_cast<float>(count) * options.frequency_penalty + options.presence_penalty;
    }
  }
  for (const auto& [token, bias] : options.logit_bias) logits[token] += bias;
  constexpr float kNever = -std::numeric_limits<float>::infinity();
  if (!options.allowed_token_ids.empty()) {
    const std::unordered_set<int32_t> allowed(options.allowed_token_ids.begin(), options.allowed_token_ids.end());
    for (int64_t token = 0; token < vocab_size; ++token) {
      if (allowed.count(static_cast<int32_t>(token)) == 0) logits[token] = kNever;
    }
  }
  for (int32_t token : options.banned_token_ids) logits[token] = kNever;
  const int64_t generated = history.count - history.prompt_tokens;
  for (const std::vector<int32_t>& word : options.bad_words) {
    const int64_t before = static_cast<int64_t>(word.size()) - 1;
    if (before > generated) continue;
    const int32_t* end = history.tokens + history.count;
    if (std::equal(word.begin(), word.end() - 1, end - before)) logits[word.back()] = kNever;
  }
}

}  // namespace deltaserve::engine
