// HttpServer: a small routing layer over civetweb (Debian's libcivetweb) for the HTTP front
// ends: the OpenAI-compatible API and /metrics. Each request runs on one of civetweb's worker
// threads, which the handler may block (a streamed response writes chunks as they come).
// Handlers see plain structs, not civetweb, so they can be tested without sockets.
//   - A request whose method and path match no route: 404, or 405 when only the method differs
//     (JSON bodies from `not_found`, so each API keeps its own error format).
//   - A body over max_body_bytes: 413 before the handler runs.
// Start binds host:port (port 0 = pick one; port() tells which). The destructor stops it,
// waiting for handlers still running.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

struct mg_context;

namespace deltaserve::api {

struct HttpRequest {
  std::string method;
  std::string path;   // without the query
  std::string query;  // after '?', undecoded
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Header: the value of a header (case-insensitive name), "" when absent.
  std::string Header(std::string_view name) const;
};

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// HttpResponse: how a handler answers: one Send, or StartStream, WriteChunk..., EndStream.
class HttpResponse {
 public:
  virtual ~HttpResponse() = default;
  virtual void Send(int status, std::string_view content_type, std::string_view body,
                    const HttpHeaders& headers = {}) = 0;
  // A 200 response with chunked transfer encoding; false when the client is gone.
  virtual bool StartStream(std::string_view content_type, const HttpHeaders& headers = {}) = 0;
  virtual bool WriteChunk(std::string_view data) = 0;
  virtual void EndStream() = 0;
};

using HttpHandler = std::function<void(const HttpRequest&, HttpResponse&)>;

struct HttpRoute {
  std::string method;  // GET, POST
  std::string path;    // exact
  HttpHandler handler;
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  int threads = 8;  // requests handled at once; more wait for a thread
  int64_t max_body_bytes = 4 << 20;
  // Answers requests no route takes: (status 404 or 405, message) -> response.
  std::function<void(int, const std::string&, HttpResponse&)> not_found;
};

class HttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(HttpServerOptions options, std::vector<HttpRoute> routes);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  // Dispatch: what the server does with a request it has read (public for tests).
  void Dispatch(const HttpRequest& request, HttpResponse& response) const;
  const HttpServerOptions& options() const { return options_; }

 private:
  HttpServer(HttpServerOptions options, std::vector<HttpRoute> routes)
      : options_(std::move(options)), routes_(std::move(routes)) {}

  HttpServerOptions options_;
  std::vector<HttpRoute> routes_;
  mg_context* context_ = nullptr;
  int port_ = 0;
};

// HttpStatusText: "OK", "Not Found", ... for the status line.
const char* HttpStatusText(int status);

}  // namespace deltaserve::api
