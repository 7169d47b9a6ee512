// ChatTemplate: turns chat messages into the model's prompt tokens, the way the model was
// trained to see them. The template is tokenizer_config.json's "chat_template" (a string, or
// the entry named "default" of a list of {name, template}) or a chat_template.jinja file beside
// it, rendered with JinjaTemplate (messages, add_generation_prompt, bos_token, eos_token).
// A model with neither uses the documented fallback (kFallbackSource):
//   <bos>role: content\n ... assistant:
// which keeps chat usable on base models, though such a model was never trained on it.
//
// Encode renders and tokenizes: occurrences of the BOS and EOS token strings in the rendered
// text become those tokens' ids (tokenizers do not map them from plain text); the rest goes
// through Tokenizer::Encode (which splits out a tokenizer.json's added tokens such as
// <|im_start|>). No BOS is added beyond what the template writes. Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model/jinja_template.h"
#include "server/model/tokenizer.h"

namespace deltaserve::model {

struct ChatMessage {
  std::string role;  // system, user, assistant, tool, ...
  std::string content;
};

class ChatTemplate {
 public:
  static constexpr const char* kFallbackSource =
      "{{ bos_token }}{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}"
      "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}";

  // Load reads the template of a Hugging Face model directory (the fallback when it has none);
  // INVALID_ARGUMENT naming the file when the template is outside the supported subset.
  static absl::StatusOr<std::shared_ptr<const ChatTemplate>> Load(const std::string& model_dir);
  static absl::StatusOr<ChatTemplate> FromSource(std::string_view source, std::string bos_token,
                                                 std::string eos_token, bool is_fallback = false);

  // Render: the prompt text; INVALID_ARGUMENT when the template refuses the conversation.
  absl::StatusOr<std::string> Render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  absl::StatusOr<std::vector<int32_t>> Encode(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt) const;
  // Whether the model has no template of its own.
  bool is_fallback() const { return is_fallback_; }

 private:
  ChatTemplate(JinjaTemplate jinja, std::string bos_token, std::string eos_token, bool is_fallback)
      : jinja_(std::move(jinja)), bos_token_(std::move(bos_token)), eos_token_(std::move(eos_token)),
        is_fallback_(is_fallback) {}

  JinjaTemplate jinja_;
  std::string bos_token_;
  std::string eos_token_;
  bool is_fallback_;
};

}  // namespace deltaserve::model
