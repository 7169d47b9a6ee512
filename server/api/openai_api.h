// OpenAiApi: the OpenAI-compatible HTTP API, as vLLM serves it, over the same GenerationFront
// as the gRPC Generation service (same keys, quotas, limits, variants and engine):
//   POST /v1/completions        one prompt; "stream": true answers with server-sent events
//   POST /v1/chat/completions   messages rendered with the model's chat template
//   GET  /v1/models             the base model and every servable variant the caller may use,
//                               with "root" (the base model) and "parent" (what it derives from)
//   GET  /health                200 while serving, 503 while draining
// Requests carry "Authorization: Bearer KEY" and optionally "X-Request-Id". Errors are
// OpenAI's JSON ({"error": {"message", "type", "param", "code"}}) with the HTTP status of the
// gRPC code (400, 401, 403, 404, 429 with Retry-After, 503, ...); a stream that fails after it
// started ends with one "data: {"error": ...}" event. Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/api/generation_front.h"
#include "server/api/http_server.h"
#include "server/api/serving_state.h"
#include "server/model/chat_template.h"
#include "server/telemetry/server_metrics.h"

namespace deltaserve::api {

class OpenAiApi {
 public:
  // chat: the model's chat template, or why chat completions are off (FAILED_PRECONDITION).
  OpenAiApi(GenerationFront* front, absl::StatusOr<std::shared_ptr<const model::ChatTemplate>> chat,
            const ServingState* state, telemetry::ServerMetrics* metrics);

  std::vector<HttpRoute> Routes();

  // HttpStatusOf: the HTTP status of a status code (INVALID_ARGUMENT 400, NOT_FOUND 404, ...).
  static int HttpStatusOf(absl::StatusCode code);
  // SendError answers with OpenAI's error JSON (and Retry-After when the status says when).
  static void SendError(const absl::Status& status, HttpResponse& response);
  // SendHttpError: the same for an HTTP-level error (404 no route, 405, 413).
  static void SendHttpError(int http_status, const std::string& message, HttpResponse& response);

 private:
  void Generate(const HttpRequest& request, HttpResponse& response, bool chat);
  void Models(const HttpRequest& request, HttpResponse& response);

  GenerationFront* front_;
  absl::StatusOr<std::shared_ptr<const model::ChatTemplate>> chat_;
  const ServingState* state_;
  telemetry::ServerMetrics* metrics_;
  absl::Time started_ = absl::Now();
};

}  // namespace deltaserve::api
