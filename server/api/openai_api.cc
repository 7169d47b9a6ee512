#include "server/api/openai_api.h"

#include <cmath>
#include <deque>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/api/grpc_status.h"
#include "server/api/openai_request.h"
#include "server/common/retry_after.h"
#include "server/common/status_macros.h"
#include "server/model/utf8_stream.h"

namespace deltaserve::api {
namespace {

using Json = nlohmann::json;

constexpr const char* kJson = "application/json";

std::string Dump(const Json& json) { return json.dump(-1, ' ', false, Json::error_handler_t::replace); }

// HttpSink: the engine's sink for one HTTP request, read by the handler's thread.
class HttpSink final : public engine::RequestSink {
 public:
  explicit HttpSink(std::shared_ptr<auth::RequestLease> lease) : lease_(std::move(lease)) {}

  void OnOutput(engine::GenerationOutput output) override {
    absl::MutexLock lock(&mutex_);
    pieces_.push_back(std::move(output));
  }

  void OnFinished(engine::RequestResult result) override {
    absl::MutexLock lock(&mutex_);
    if (lease_ != nullptr) {  // the request is over: its tokens are charged and its slot is free
      lease_->Charge(result.usage.completion_tokens);
      lease_.reset();
    }
    result_ = std::move(result);
  }

  // Wait up to `wait` for output; moves what came into *pieces, and the result once finished.
  void Wait(absl::Duration wait, std::vector<engine::GenerationOutput>* pieces,
            std::optional<engine::RequestResult>* result) {
    mutex_.LockWhenWithTimeout(absl::Condition(
                                   +[](HttpSink* sink) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sink->mutex_) {
                                     return !sink->pieces_.empty() || sink->result_.has_value();
                                   },
                                   this),
                               wait);
    for (engine::GenerationOutput& piece : pieces_) pieces->push_back(std::move(piece));
    pieces_.clear();
    if (result_.has_value()) *result = std::move(result_);
    result_.reset();
    mutex_.Unlock();
  }

 private:
  absl::Mutex mutex_;
  std::shared_ptr<auth::RequestLease> lease_ ABSL_GUARDED_BY(mutex_);
  std::deque<engine::GenerationOutput> pieces_ ABSL_GUARDED_BY(mutex_);
  std::optional<engine::RequestResult> result_ ABSL_GUARDED_BY(mutex_);
};

// The status a finished request ends with.
absl::Status FinalStatus(const engine::RequestResult& result) {
  if (!result.status.ok()) return result.status;
  if (result.reason == engine::FinishReason::kCancelled) return absl::CancelledError("the request was cancelled");
  if (result.reason == engine::FinishReason::kDeadlineExceeded) {
    return absl::DeadlineExceededError("the request's deadline passed");
  }
  return absl::OkStatus();
}

const char* FinishReasonText(engine::FinishReason reason) {
  return reason == engine::FinishReason::kLength ? "length" : "stop";
}

const char* ErrorType(int http_status) {
  switch (http_status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 405: return "invalid_request_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return "server_error";
  }
}

Json ErrorJson(int http_status, absl::string_view message) {
  return {{"error", {{"message", std::string(message)}, {"type", ErrorType(http_status)}, {"param", nullptr},
                     {"code", http_status}}}};
}

// The output of one request as it accumulates, and its OpenAI logprobs forms.
struct Accumulated {
  std::string text;
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
};

Json CompletionLogprobs(const model::Tokenizer& tokenizer, const engine::GenerationOutput& output, size_t text_offset) {
  Json tokens = Json::array(), values = Json::array(), offsets = Json::array();
  for (size_t i = 0; i < output.token_ids.size(); ++i) {
    const std::string token = model::SanitizeUtf8(tokenizer.TokenBytes(output.token_ids[i]));
    tokens.push_back(token);
    values.push_back(i < output.logprobs.size() ? Json(output.logprobs[i]) : Json(nullptr));
    offsets.push_back(text_offset);
    text_offset += token.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", nullptr}, {"text_offset", offsets}};
}

Json ChatLogprobs(const model::Tokenizer& tokenizer, const engine::GenerationOutput& output) {
  Json content = Json::array();
  for (size_t i = 0; i < output.token_ids.size(); ++i) {
    const std::string bytes = tokenizer.TokenBytes(output.token_ids[i]);
    Json byte_list = Json::array();
    for (unsigned char c : bytes) byte_list.push_back(static_cast<int>(c));
    content.push_back({{"token", model::SanitizeUtf8(bytes)},
                       {"logprob", i < output.logprobs.size() ? Json(output.logprobs[i]) : Json(nullptr)},
                       {"bytes", byte_list},
                       {"top_logprobs", Json::array()}});
  }
  return {{"content", content}};
}

Json UsageJson(const engine::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens},
          {"completion_tokens", usage.completion_tokens},
          {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", usage.cached_prompt_tokens}}}};
}

}  // namespace

OpenAiApi::OpenAiApi(GenerationFront* front, absl::StatusOr<std::shared_ptr<const model::ChatTemplate>> chat,
                     const ServingState* state, telemetry::ServerMetrics* metrics)
    : front_(front), chat_(std::move(chat)), state_(state), metrics_(metrics) {}

int OpenAiApi::HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kCancelled: return 499;
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

void OpenAiApi::SendError(const absl::Status& status, HttpResponse& response) {
  const int http_status = HttpStatusOf(status.code());
  HttpHeaders headers;
  if (std::optional<absl::Duration> retry_after = common::RetryAfter(status)) {
    headers.emplace_back("Retry-After", std::to_string(static_cast<int64_t>(std::ceil(absl::ToDoubleSeconds(*retry_after)))));
  }
  response.Send(http_status, kJson, Dump(ErrorJson(http_status, status.message())), headers);
}

void OpenAiApi::SendHttpError(int http_status, const std::string& message, HttpResponse& response) {
  response.Send(http_status, kJson, Dump(ErrorJson(http_status, message)));
}

std::vector<HttpRoute> OpenAiApi::Routes() {
  return {
      {"POST", "/v1/completions", [this](const HttpRequest& r, HttpResponse& w) { Generate(r, w, false); }},
      {"POST", "/v1/chat/completions", [this](const HttpRequest& r, HttpResponse& w) { Generate(r, w, true); }},
      {"GET", "/v1/models", [this](const HttpRequest& r, HttpResponse& w) { Models(r, w); }},
      {"GET", "/health",
       [this](const HttpRequest&, HttpResponse& w) {
         if (state_->draining()) {
           SendError(absl::UnavailableError("the server is shutting down"), w);
         } else {
           w.Send(200, kJson, "{\"status\": \"serving\"}");
         }
       },
       /*inline_route=*/true},
  };
}

void OpenAiApi::Generate(const HttpRequest& http, HttpResponse& response, bool chat) {
  const char* endpoint = chat ? "/v1/chat/completions" : "/v1/completions";
  OpenAiRequest parsed;
  std::shared_ptr<HttpSink> sink;
  uint64_t engine_id = 0;
  std::string request_id;
  std::string served_variant;
  int64_t served_version = 0;
  std::string tenant;
  const absl::Time started = absl::Now();
  absl::Status status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Access access, front_->Admit(http.Header("Authorization")));
    tenant = access.principal().tenant;
    ASSIGN_OR_RETURN(parsed, chat ? ParseChatRequest(http.body) : ParseCompletionRequest(http.body));
    FrontRequest request;
    request.variant = parsed.model;
    if (chat) {
      if (!chat_.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat("chat completions are off on this server: ", chat_.status().message()));
      }
      ASSIGN_OR_RETURN(request.ids, (*chat_)->Encode(front_->tokenizer(), parsed.messages, parsed.add_generation_prompt));
      if (request.ids.empty()) return absl::InvalidArgumentError("the chat template rendered an empty prompt");
    } else {
      request.text = std::move(parsed.prompt);
      request.ids = std::move(parsed.prompt_ids);
    }
    request.sampling = parsed.sampling;
    request.bad_words = parsed.bad_words;
    request.request_id = http.Header("X-Request-Id");
    std::shared_ptr<auth::RequestLease> lease;
    ASSIGN_OR_RETURN(engine::EngineRequest engine_request, front_->Prepare(access, std::move(request), &lease));
    request_id = engine_request.request_id;
    sink = std::make_shared<HttpSink>(std::move(lease));
    ASSIGN_OR_RETURN(engine_id, front_->Submit(std::move(engine_request), sink, [&](const engine::EngineRequest& submitted) {
                       served_variant = submitted.variant_name;
                       served_version = submitted.variant_version;
                     }));
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    metrics_->RecordRpc(endpoint, absl::StatusCodeToString(status.code()));
    SendError(status, response);
    return;
  }
  const std::string model = parsed.model.empty() ? front_->base_model_name() : parsed.model;
  const int64_t created = absl::ToUnixSeconds(absl::Now());
  const std::string id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", request_id);
  const std::string fingerprint =
      served_variant.empty() ? "deltaserve:base" : absl::StrCat("deltaserve:", served_variant, "@", served_version);
  const model::Tokenizer& tokenizer = front_->tokenizer();
  // One choice object (streamed chunk or whole) for a piece of output.
  auto choice = [&](const engine::GenerationOutput& piece, size_t text_offset, Json finish_reason, bool whole) {
    Json result = {{"index", piece.index}};
    if (chat) {
      Json message = {{"content", piece.text}};
      if (whole) message["role"] = "assistant";
      result[whole ? "message" : "delta"] = message;
      result["logprobs"] = parsed.sampling.logprobs ? ChatLogprobs(tokenizer, piece) : Json(nullptr);
    } else {
      result["text"] = piece.text;
      result["logprobs"] = parsed.sampling.logprobs ? CompletionLogprobs(tokenizer, piece, text_offset) : Json(nullptr);
    }
    result["finish_reason"] = std::move(finish_reason);
    return result;
  };
  auto envelope = [&](Json choices, bool chunk) {
    return Json{{"id", id},
                {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
                {"created", created},
                {"model", model},
                {"system_fingerprint", fingerprint},
                {"choices", std::move(choices)}};
  };

  std::optional<engine::RequestResult> result;
  std::vector<engine::GenerationOutput> pieces;
  // With n > 1 each choice ends by itself (its last piece says why); with one, the result says.
  const bool several = parsed.sampling.n > 1;
  if (!parsed.stream) {
    std::map<int32_t, engine::GenerationOutput> all;  // by choice index
    bool cancelled = false;
    while (!result.has_value()) {
      sink->Wait(absl::Milliseconds(500), &pieces, &result);
      if (!cancelled && !result.has_value() && response.ClientGone()) {
        front_->Cancel(engine_id);  // nobody will read the answer; the engine ends the request shortly
        cancelled = true;
      }
      if (result.has_value() && !several) {
        result->final_output.choice_finished = result->reason;
        pieces.push_back(std::move(result->final_output));
      }
      for (engine::GenerationOutput& piece : pieces) {
        engine::GenerationOutput& whole = all[piece.index];
        whole.index = piece.index;
        whole.text += piece.text;
        whole.token_ids.insert(whole.token_ids.end(), piece.token_ids.begin(), piece.token_ids.end());
        whole.logprobs.insert(whole.logprobs.end(), piece.logprobs.begin(), piece.logprobs.end());
        if (piece.choice_finished.has_value()) whole.choice_finished = piece.choice_finished;
      }
      pieces.clear();
    }
    status = FinalStatus(*result);
    metrics_->RecordRpc(endpoint, absl::StatusCodeToString(status.code()));
    GenerationFront::LogFinished(
        {"http", request_id, tenant, served_variant, served_version, status, result->usage, absl::Now() - started});
    if (!status.ok()) {
      SendError(status, response);
      return;
    }
    Json choices = Json::array();
    for (const auto& [index, whole] : all) {
      choices.push_back(choice(whole, 0, FinishReasonText(whole.choice_finished.value_or(result->reason)), true));
    }
    Json body = envelope(std::move(choices), false);
    body["usage"] = UsageJson(result->usage);
    response.Send(200, kJson, Dump(body));
    return;
  }

  auto event = [&](const Json& data) { return response.WriteChunk(absl::StrCat("data: ", Dump(data), "\n\n")); };
  bool open = response.StartStream("text/event-stream");
  for (int32_t index = 0; open && chat && index < parsed.sampling.n; ++index) {
    open = event(envelope(Json::array({{{"index", index}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                                        {"logprobs", nullptr}, {"finish_reason", nullptr}}}),
                          true));
  }
  std::map<int32_t, size_t> text_offsets;  // by choice index
  while (!result.has_value()) {
    sink->Wait(absl::Milliseconds(500), &pieces, &result);
    for (const engine::GenerationOutput& piece : pieces) {
      const Json finish = piece.choice_finished.has_value() ? Json(FinishReasonText(*piece.choice_finished)) : Json(nullptr);
      if (open && (!piece.text.empty() || !piece.token_ids.empty() || !finish.is_null())) {
        open = event(envelope(Json::array({choice(piece, text_offsets[piece.index], finish, false)}), true));
      }
      text_offsets[piece.index] += piece.text.size();
    }
    pieces.clear();
    if (open && !result.has_value() && response.ClientGone()) open = false;
    if (!open && !result.has_value()) {
      front_->Cancel(engine_id);  // the client is gone; the engine ends the request shortly
    }
  }
  status = FinalStatus(*result);
  if (!open && status.ok()) status = absl::CancelledError("the client closed the stream");
  metrics_->RecordRpc(endpoint, absl::StatusCodeToString(status.code()));
  GenerationFront::LogFinished(
      {"http", request_id, tenant, served_variant, served_version, status, result->usage, absl::Now() - started});
  if (!open) return;
  if (status.ok()) {
    if (!several) {
      event(envelope(Json::array({choice(result->final_output, text_offsets[0], FinishReasonText(result->reason), false)}),
                     true));
    }
    if (parsed.include_usage) {
      Json usage = envelope(Json::array(), true);
      usage["usage"] = UsageJson(result->usage);
      event(usage);
    }
  } else {
    event(ErrorJson(HttpStatusOf(status.code()), status.message()));
  }
  response.WriteChunk("data: [DONE]\n\n");
  response.EndStream();
}

void OpenAiApi::Models(const HttpRequest& http, HttpResponse& response) {
  absl::StatusOr<Access> access = front_->Admit(http.Header("Authorization"));
  if (!access.ok()) {
    metrics_->RecordRpc("/v1/models", absl::StatusCodeToString(access.status().code()));
    SendError(access.status(), response);
    return;
  }
  const std::string& base = front_->base_model_name();
  Json data = Json::array();
  data.push_back({{"id", base},
                  {"object", "model"},
                  {"created", absl::ToUnixSeconds(started_)},
                  {"owned_by", "deltaserve"},
                  {"root", base},
                  {"parent", nullptr}});
  std::string after;
  while (true) {
    std::vector<control::VariantStatus> page = front_->variants().List("", after, 500);
    for (const control::VariantStatus& status : page) {
      const control::Variant& variant = *status.variant;
      if (!access->Sees(variant.name) || !control::CheckServable(variant).ok()) continue;
      const std::string name_space = control::NamespaceOf(variant.name);
      data.push_back({{"id", variant.name},
                      {"object", "model"},
                      {"created", absl::ToUnixSeconds(variant.created)},
                      {"owned_by", name_space.empty() ? "deltaserve" : name_space},
                      {"root", base},
                      {"parent", variant.lineage.parents.empty() ? base : variant.lineage.parents.front()}});
    }
    if (page.size() < 500) break;
    after = page.back().variant->name;
  }
  metrics_->RecordRpc("/v1/models", "OK");
  response.Send(200, kJson, Dump(Json{{"object", "list"}, {"data", data}}));
}

}  // namespace deltaserve::api
