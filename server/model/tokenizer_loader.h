// LoadTokenizer picks and loads the tokenizer of a Hugging Face model directory:
// tokenizer.model (SentencePiece) when present, else tokenizer.json (byte-level BPE). BOS/EOS
// come from generation_config.json, then config.json, then tokenizer_config.json's token
// strings, then the SentencePiece model; add_bos from tokenizer_config.json add_bos_token, else
// whether tokenizer.json's post-processor prepends BOS, else true for SentencePiece.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "server/model/model_config.h"
#include "server/model/tokenizer.h"

namespace deltaserve::model {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir,
                                                         const ModelConfig& config);

// ReadOptionalJson: the JSON in `path`, or null when it is missing or not JSON.
nlohmann::json ReadOptionalJson(const std::string& path);
// SpecialTokenString: tokenizer_config.json's token string under `key` ("bos_token": "<s>" or
// {"content": "<s>", ...}), or "".
std::string SpecialTokenString(const nlohmann::json& config, const char* key);

}  // namespace deltaserve::model
