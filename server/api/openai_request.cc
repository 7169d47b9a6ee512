#include "server/api/openai_request.h"

#include <limits>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/common/json_limits.h"
#include "server/common/status_macros.h"

namespace deltaserve::api {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(const char* field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("\"", field, "\" ", what));
}

bool Present(const Json& body, const char* field) { return body.contains(field) && !body[field].is_null(); }

absl::StatusOr<Json> ParseBody(std::string_view text) {
  if (!common::JsonNestingWithin(text, 32)) return absl::InvalidArgumentError("the JSON body nests deeper than 32 levels");
  Json body = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return absl::InvalidArgumentError("the body is not valid JSON");
  if (!body.is_object()) return absl::InvalidArgumentError("the body must be a JSON object");
  return body;
}

absl::StatusOr<int64_t> Integer(const Json& body, const char* field, int64_t low, int64_t high) {
  const Json& value = body[field];
  if (!value.is_number_integer()) return FieldError(field, "must be an integer");
  const int64_t number = value.get<int64_t>();
  if (number < low || number > high) return FieldError(field, absl::StrCat("must be between ", low, " and ", high));
  return number;
}

absl::StatusOr<double> Number(const Json& body, const char* field, double low, double high) {
  const Json& value = body[field];
  if (!value.is_number()) return FieldError(field, "must be a number");
  const double number = value.get<double>();
  if (!(number >= low && number <= high)) return FieldError(field, absl::StrCat("must be between ", low, " and ", high));
  return number;
}

absl::StatusOr<bool> Boolean(const Json& body, const char* field) {
  if (!body[field].is_boolean()) return FieldError(field, "must be true or false");
  return body[field].get<bool>();
}

absl::StatusOr<std::vector<int32_t>> TokenIds(const Json& value, const char* field) {
  std::vector<int32_t> ids;
  for (const Json& id : value) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return FieldError(field, "must hold non-negative integer token ids");
    }
    ids.push_back(id.get<int32_t>());
  }
  return ids;
}

// Refuse asks the engine cannot honour instead of silently ignoring them.
absl::Status RefuseUnsupported(const Json& body) {
  if (Present(body, "best_of") && body["best_of"] != 1) return FieldError("best_of", "must be 1");
  if (Present(body, "echo") && body["echo"] != false) return FieldError("echo", "is not supported");
  if (Present(body, "suffix") && body["suffix"] != "") return FieldError("suffix", "is not supported");
  if (Present(body, "tools") || Present(body, "functions")) {
    return absl::InvalidArgumentError("tool and function calling is not supported");
  }
  return absl::OkStatus();
}

// OpenAI's presence_penalty, frequency_penalty and logit_bias ({"token id": bias}), and vLLM's
// repetition_penalty and min_p (its bad_words are read with the common fields).
absl::Status ParseLogitAdjustments(const Json& body, engine::SamplingOptions* sampling) {
  if (Present(body, "presence_penalty")) {
    ASSIGN_OR_RETURN(double penalty, Number(body, "presence_penalty", -2.0, 2.0));
    sampling->presence_penalty = static_cast<float>(penalty);
  }
  if (Present(body, "frequency_penalty")) {
    ASSIGN_OR_RETURN(double penalty, Number(body, "frequency_penalty", -2.0, 2.0));
    sampling->frequency_penalty = static_cast<float>(penalty);
  }
  if (Present(body, "repetition_penalty")) {
    ASSIGN_OR_RETURN(double penalty, Number(body, "repetition_penalty", 0.0, 100.0));
    if (penalty == 0.0) return FieldError("repetition_penalty", "must be above 0 (1 = off)");
    sampling->repetition_penalty = static_cast<float>(penalty);
  }
  if (Present(body, "min_p")) {
    ASSIGN_OR_RETURN(double min_p, Number(body, "min_p", 0.0, 1.0));
    sampling->min_p = static_cast<float>(min_p);
  }
  if (Present(body, "logit_bias")) {
    const Json& biases = body["logit_bias"];
    if (!biases.is_object()) return FieldError("logit_bias", "must be an object of token id strings to biases");
    for (const auto& [key, value] : biases.items()) {
      int32_t token = 0;
      if (!absl::SimpleAtoi(key, &token) || token < 0) {
        return FieldError("logit_bias", absl::StrCat("keys must be token ids, not \"", key.substr(0, 32), "\""));
      }
      if (!value.is_number() || !(value.get<double>() >= -100.0 && value.get<double>() <= 100.0)) {
        return FieldError("logit_bias", absl::StrCat("of token ", token, " must be a number between -100 and 100"));
      }
      sampling->logit_bias.emplace_back(token, static_cast<float>(value.get<double>()));
    }
  }
  return absl::OkStatus();
}

// Common fields of both endpoints.
absl::Status ParseCommon(const Json& body, OpenAiRequest* request) {
  RETURN_IF_ERROR(RefuseUnsupported(body));
  if (Present(body, "model")) {
    if (!body["model"].is_string()) return FieldError("model", "must be a string: a variant name or the base model's");
    request->model = body["model"].get<std::string>();
  }
  engine::SamplingOptions& sampling = request->sampling;
  sampling.temperature = 1.0f;  // OpenAI's default
  const char* max_field = request->chat && Present(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (Present(body, max_field)) {
    ASSIGN_OR_RETURN(int64_t max_tokens, Integer(body, max_field, 1, std::numeric_limits<int32_t>::max()));
    sampling.max_tokens = static_cast<int32_t>(max_tokens);
  }
  if (Present(body, "temperature")) {
    ASSIGN_OR_RETURN(double temperature, Number(body, "temperature", 0.0, 2.0));
    sampling.temperature = static_cast<float>(temperature);
  }
  if (Present(body, "top_p")) {
    ASSIGN_OR_RETURN(double top_p, Number(body, "top_p", 0.0, 1.0));
    if (top_p == 0.0) return FieldError("top_p", "must be above 0");
    sampling.top_p = static_cast<float>(top_p);
  }
  if (Present(body, "top_k")) {
    ASSIGN_OR_RETURN(int64_t top_k, Integer(body, "top_k", -1, std::numeric_limits<int32_t>::max()));
    sampling.top_k = top_k < 0 ? 0 : static_cast<int32_t>(top_k);  // vLLM: -1 = off
  }
  RETURN_IF_ERROR(ParseLogitAdjustments(body, &sampling));
  if (Present(body, "bad_words")) {
    const Json& words = body["bad_words"];
    if (!words.is_array()) return FieldError("bad_words", "must be a list of strings");
    for (const Json& word : words) {
      if (!word.is_string()) return FieldError("bad_words", "must be a list of strings");
      request->bad_words.push_back(word.get<std::string>());
    }
  }
  if (Present(body, "n")) {
    ASSIGN_OR_RETURN(int64_t n, Integer(body, "n", 1, 16));
    request->sampling.n = static_cast<int32_t>(n);
  }
  if (Present(body, "seed")) {
    ASSIGN_OR_RETURN(int64_t seed, Integer(body, "seed", std::numeric_limits<int64_t>::min(),
                                           std::numeric_limits<int64_t>::max()));
    sampling.seed = static_cast<uint64_t>(seed);
  }
  if (Present(body, "stop")) {
    const Json& stop = body["stop"];
    if (stop.is_string()) {
      sampling.stop.push_back(stop.get<std::string>());
    } else if (stop.is_array() && stop.size() <= 16) {
      for (const Json& item : stop) {
        if (!item.is_string()) return FieldError("stop", "must be a string or a list of strings");
        sampling.stop.push_back(item.get<std::string>());
      }
    } else {
      return FieldError("stop", "must be a string or a list of at most 16 strings");
    }
  }
  if (Present(body, "stop_token_ids")) {
    if (!body["stop_token_ids"].is_array()) return FieldError("stop_token_ids", "must be a list of token ids");
    ASSIGN_OR_RETURN(sampling.stop_token_ids, TokenIds(body["stop_token_ids"], "stop_token_ids"));
  }
  if (Present(body, "ignore_eos")) {
    ASSIGN_OR_RETURN(sampling.ignore_eos, Boolean(body, "ignore_eos"));
  }
  if (Present(body, "stream")) {
    ASSIGN_OR_RETURN(request->stream, Boolean(body, "stream"));
  }
  if (Present(body, "stream_options")) {
    const Json& options = body["stream_options"];
    if (!options.is_object()) return FieldError("stream_options", "must be an object");
    if (!request->stream) return FieldError("stream_options", "is only allowed with \"stream\": true");
    if (Present(options, "include_usage")) {
      ASSIGN_OR_RETURN(request->include_usage, Boolean(options, "include_usage"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> MessageContent(const Json& content, size_t index) {
  const std::string field = absl::StrCat("messages[", index, "].content");
  if (content.is_string()) return content.get<std::string>();
  if (content.is_null()) return std::string();
  if (!content.is_array()) return FieldError(field.c_str(), "must be a string or a list of text parts");
  std::string text;
  for (const Json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
      return FieldError(field.c_str(), "may hold only {\"type\": \"text\", \"text\": ...} parts");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseCompletionRequest(std::string_view text) {
  ASSIGN_OR_RETURN(Json body, ParseBody(text));
  OpenAiRequest request;
  RETURN_IF_ERROR(ParseCommon(body, &request));
  if (Present(body, "logprobs")) {
    ASSIGN_OR_RETURN(int64_t logprobs, Integer(body, "logprobs", 0, 20));
    if (logprobs > 0) {
      return FieldError("logprobs", "must be 0: the sampled token's log-probability is reported, not top alternatives");
    }
    request.sampling.logprobs = true;
  }
  if (!Present(body, "prompt")) return FieldError("prompt", "is required");
  Json prompt = body["prompt"];
  if (prompt.is_array() && prompt.size() == 1 && (prompt[0].is_string() || prompt[0].is_array())) prompt = prompt[0];
  if (prompt.is_string()) {
    request.prompt = prompt.get<std::string>();
    if (request.prompt.empty()) return FieldError("prompt", "is empty");
  } else if (prompt.is_array() && !prompt.empty() && prompt[0].is_number()) {
    ASSIGN_OR_RETURN(request.prompt_ids, TokenIds(prompt, "prompt"));
  } else if (prompt.is_array() && prompt.size() > 1) {
    return FieldError("prompt", "must be one prompt (a string or token ids); send several prompts as several requests");
  } else {
    return FieldError("prompt", "must be a non-empty string or a list of token ids");
  }
  return request;
}

absl::StatusOr<OpenAiRequest> ParseChatRequest(std::string_view text) {
  ASSIGN_OR_RETURN(Json body, ParseBody(text));
  OpenAiRequest request;
  request.chat = true;
  RETURN_IF_ERROR(ParseCommon(body, &request));
  if (Present(body, "logprobs")) {
    ASSIGN_OR_RETURN(request.sampling.logprobs, Boolean(body, "logprobs"));
  }
  if (Present(body, "top_logprobs") && body["top_logprobs"] != 0) {
    return FieldError("top_logprobs", "must be 0: the sampled token's log-probability is reported, not top alternatives");
  }
  if (Present(body, "add_generation_prompt")) {
    ASSIGN_OR_RETURN(request.add_generation_prompt, Boolean(body, "add_generation_prompt"));
  }
  if (!Present(body, "messages") || !body["messages"].is_array() || body["messages"].empty()) {
    return FieldError("messages", "must be a non-empty list of {\"role\", \"content\"} objects");
  }
  const Json& messages = body["messages"];
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& message = messages[i];
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string() ||
        message["role"].get<std::string>().empty()) {
      const std::string field = absl::StrCat("messages[", i, "]");
      return FieldError(field.c_str(), "must be an object with a \"role\" string");
    }
    ASSIGN_OR_RETURN(std::string content, MessageContent(message.contains("content") ? message["content"] : Json(), i));
    request.messages.push_back({message["role"].get<std::string>(), std::move(content)});
  }
  return request;
}

}  // namespace deltaserve::api
