#include "server/model/tokenizer_loader.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"
#include "server/model/byte_level_bpe_tokenizer.h"
#include "server/model/sentencepiece_tokenizer.h"

namespace deltaserve::model {
namespace {

using Json = nlohmann::json;

std::vector<int32_t> IdList(const Json& json, const char* key) {
  std::vector<int32_t> ids;
  if (!json.is_object() || !json.contains(key)) return ids;
  const Json& value = json[key];
  if (value.is_number_integer()) ids.push_back(value.get<int32_t>());
  if (value.is_array()) {
    for (const Json& id : value) {
      if (id.is_number_integer()) ids.push_back(id.get<int32_t>());
    }
  }
  return ids;
}

// Whether a TemplateProcessing post-processor starts single sequences with `bos`.
bool PostProcessorAddsBos(const Json& processor, const std::string& bos) {
  if (!processor.is_object()) return false;
  if (processor.value("type", std::string()) == "Sequence" && processor.contains("processors")) {
    for (const Json& item : processor["processors"]) {
      if (PostProcessorAddsBos(item, bos)) return true;
    }
    return false;
  }
  if (processor.value("type", std::string()) != "TemplateProcessing") return false;
  const Json& single = processor["single"];
  if (!single.is_array() || single.empty() || !single[0].contains("SpecialToken")) return false;
  const Json& first = single[0]["SpecialToken"];
  return first.is_object() && first.value("id", std::string()) == bos;
}

}  // namespace

Json ReadOptionalJson(const std::string& path) {
  absl::StatusOr<std::string> text = common::ReadFileToString(path, 64u << 20);
  if (!text.ok()) return Json();
  Json json = Json::parse(*text, nullptr, false);
  return json.is_discarded() ? Json() : json;
}

std::string SpecialTokenString(const Json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return "";
  const Json& value = config[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return "";
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir,
                                                         const ModelConfig& config) {
  const Json tokenizer_config = ReadOptionalJson(common::JoinPath(model_dir, "tokenizer_config.json"));
  const Json generation_config =
      ReadOptionalJson(common::JoinPath(model_dir, "generation_config.json"));
  const std::string bos_string = SpecialTokenString(tokenizer_config, "bos_token");
  const std::string eos_string = SpecialTokenString(tokenizer_config, "eos_token");

  std::unique_ptr<Tokenizer> tokenizer;
  SpecialTokens special;
  std::optional<bool> add_bos;
  if (tokenizer_config.is_object() && tokenizer_config.contains("add_bos_token") &&
      tokenizer_config["add_bos_token"].is_boolean()) {
    add_bos = tokenizer_config["add_bos_token"].get<bool>();
  }
  std::string sentencepiece_path = common::JoinPath(model_dir, "tokenizer.model");
  std::string json_path = common::JoinPath(model_dir, "tokenizer.json");
  if (common::PathExists(sentencepiece_path)) {
    ASSIGN_OR_RETURN(auto sentencepiece, SentencePieceTokenizer::Load(sentencepiece_path));
    if (sentencepiece->ModelBosId() >= 0) special.bos_id = sentencepiece->ModelBosId();
    if (sentencepiece->ModelEosId() >= 0) special.eos_ids.push_back(sentencepiece->ModelEosId());
    if (!add_bos.has_value()) add_bos = true;
    tokenizer = std::move(sentencepiece);
  } else if (common::PathExists(json_path)) {
    ASSIGN_OR_RETURN(std::string text, common::ReadFileToString(json_path, 256u << 20));
    absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> bpe = ByteLevelBpeTokenizer::Create(text);
    if (!bpe.ok()) {
      return absl::Status(bpe.status().code(), absl::StrCat(json_path, ": ", bpe.status().message()));
    }
    if (!bos_string.empty() && (*bpe)->TokenId(bos_string) >= 0) {
      special.bos_id = (*bpe)->TokenId(bos_string);
    }
    if (!eos_string.empty() && (*bpe)->TokenId(eos_string) >= 0) {
      special.eos_ids.push_back((*bpe)->TokenId(eos_string));
    }
    if (!add_bos.has_value()) {
      Json json = Json::parse(text, nullptr, false);
      add_bos = !bos_string.empty() && PostProcessorAddsBos(json["post_processor"], bos_string);
    }
    tokenizer = std::move(*bpe);
  } else {
    return absl::NotFoundError(
        absl::StrCat(model_dir, " has neither tokenizer.model nor tokenizer.json"));
  }
  // Explicit ids in generation_config.json / config.json take precedence.
  std::vector<int32_t> bos_ids = IdList(generation_config, "bos_token_id");
  if (bos_ids.empty()) bos_ids = config.bos_token_ids;
  if (!bos_ids.empty()) special.bos_id = bos_ids[0];
  std::vector<int32_t> eos_ids = IdList(generation_config, "eos_token_id");
  if (eos_ids.empty()) eos_ids = config.eos_token_ids;
  if (!eos_ids.empty()) special.eos_ids = eos_ids;
  special.add_bos = add_bos.value_or(false) && special.bos_id.has_value();
  if (tokenizer->VocabSize() > config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the tokenizer has ", tokenizer->VocabSize(), " tokens but config.json vocab_size is ",
        config.vocab_size));
  }
  tokenizer->set_special_tokens(std::move(special));
  return tokenizer;
}

}  // namespace deltaserve::model
