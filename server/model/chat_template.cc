#include "server/model/chat_template.h"

#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"
#include "server/model/tokenizer_loader.h"

namespace deltaserve::model {

absl::StatusOr<std::shared_ptr<const ChatTemplate>> ChatTemplate::Load(const std::string& model_dir) {
  const std::string config_path = common::JoinPath(model_dir, "tokenizer_config.json");
  const nlohmann::json config = ReadOptionalJson(config_path);
  const std::string bos = SpecialTokenString(config, "bos_token");
  const std::string eos = SpecialTokenString(config, "eos_token");
  std::string source;
  std::string origin = config_path;
  if (config.is_object() && config.contains("chat_template")) {
    const nlohmann::json& value = config["chat_template"];
    if (value.is_string()) {
      source = value.get<std::string>();
    } else if (value.is_array()) {
      for (const nlohmann::json& entry : value) {
        if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
            entry["template"].is_string()) {
          source = entry["template"].get<std::string>();
        }
      }
    }
  }
  const std::string jinja_path = common::JoinPath(model_dir, "chat_template.jinja");
  if (source.empty() && common::PathExists(jinja_path)) {
    ASSIGN_OR_RETURN(source, common::ReadFileToString(jinja_path, 4u << 20));
    origin = jinja_path;
  }
  const bool is_fallback = source.empty();
  absl::StatusOr<ChatTemplate> parsed = FromSource(is_fallback ? kFallbackSource : source, bos, eos, is_fallback);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": the chat template is outside the supported Jinja subset: ",
                                                   parsed.status().message()));
  }
  return std::make_shared<const ChatTemplate>(std::move(*parsed));
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromSource(std::string_view source, std::string bos_token,
                                                      std::string eos_token, bool is_fallback) {
  ASSIGN_OR_RETURN(JinjaTemplate jinja, JinjaTemplate::Parse(source));
  return ChatTemplate(std::move(jinja), std::move(bos_token), std::move(eos_token), is_fallback);
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                 bool add_generation_prompt) const {
  JinjaTemplate::Value context = JinjaTemplate::Value::object();
  JinjaTemplate::Value list = JinjaTemplate::Value::array();
  for (const ChatMessage& message : messages) {
    list.push_back({{"role", message.role}, {"content", message.content}});
  }
  context["messages"] = std::move(list);
  context["add_generation_prompt"] = add_generation_prompt;
  context["bos_token"] = bos_token_;
  context["eos_token"] = eos_token_;
  return jinja_.Render(context);
}

absl::StatusOr<std::vector<int32_t>> ChatTemplate::Encode(const Tokenizer& tokenizer,
                                                          const std::vector<ChatMessage>& messages,
                                                          bool add_generation_prompt) const {
  ASSIGN_OR_RETURN(std::string text, Render(messages, add_generation_prompt));
  const SpecialTokens& special = tokenizer.special_tokens();
  std::vector<std::pair<std::string, int32_t>> markers;
  if (!bos_token_.empty() && special.bos_id.has_value()) markers.emplace_back(bos_token_, *special.bos_id);
  if (!eos_token_.empty() && !special.eos_ids.empty()) markers.emplace_back(eos_token_, special.eos_ids.front());
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t next = std::string::npos;
    int32_t marker_id = -1;
    size_t marker_size = 0;
    for (const auto& [marker, id] : markers) {
      const size_t found = text.find(marker, pos);
      if (found < next) {
        next = found;
        marker_id = id;
        marker_size = marker.size();
      }
    }
    const size_t end = next == std::string::npos ? text.size() : next;
    if (end > pos) {
      ASSIGN_OR_RETURN(std::vector<int32_t> piece, tokenizer.Encode(std::string_view(text).substr(pos, end - pos)));
      ids.insert(ids.end(), piece.begin(), piece.end());
    }
    if (next == std::string::npos) break;
    ids.push_back(marker_id);
    pos = next + marker_size;
  }
  return ids;
}

}  // namespace deltaserve::model
