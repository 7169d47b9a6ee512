// HttpServer: the HTTP/1.1 front ends (the OpenAI-compatible API and /metrics). One event-loop
// thread owns every connection while it is idle or sending its request, so an idle or slow
// connection costs a file descriptor, never a thread; a complete request runs its handler on a
// worker thread, which the handler may block (a streamed response writes chunks as they come).
// Handlers see plain structs, so they can be tested without sockets.
//   - Limits (HttpServerOptions): a request's head must arrive within header_timeout of the
//     connection opening (or of its first byte after a keep-alive response), its body within
//     body_timeout; an idle keep-alive connection closes after keep_alive_timeout or
//     max_requests_per_connection requests; a response write that makes no progress for
//     write_timeout ends the connection.
//   - At max_connections, a new connection takes the place of the oldest one that has no request
//     running (idle, or still sending its head or body); when every connection has a request
//     running, the new one gets an immediate 503 and is closed.
//   - Routes marked `inline_route` (cheap, never blocking, such as /health) are answered on the
//     event loop itself, so they answer even while every worker is busy.
//   - A request whose method and path match no route: 404, or 405 when only the method differs
//     (JSON bodies from `not_found`, so each API keeps its own error format). Unparseable
//     requests get 400/413/431/501/505 from not_found, then the connection closes.
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
#include "absl/time/time.h"

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
  // ClientGone: whether the client has closed its side (a handler that waits long checks it).
  virtual bool ClientGone() { return false; }
};

using HttpHandler = std::function<void(const HttpRequest&, HttpResponse&)>;

struct HttpRoute {
  std::string method;  // GET, POST
  std::string path;    // exact
  HttpHandler handler;
  // Answered on the event loop: the handler must be cheap, never block, and Send once.
  bool inline_route = false;
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  int threads = 64;  // requests handled at once; more wait for a thread
  int64_t max_body_bytes = 4 << 20;
  int max_connections = 1024;
  absl::Duration header_timeout = absl::Seconds(10);
  absl::Duration body_timeout = absl::Seconds(60);
  absl::Duration keep_alive_timeout = absl::Seconds(15);
  absl::Duration write_timeout = absl::Seconds(30);
  int max_requests_per_connection = 1000;
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
  // IsInline: whether the route for this method and path is answered on the event loop.
  bool IsInline(const HttpRequest& request) const;
  const HttpServerOptions& options() const { return options_; }

 private:
  class Loop;
  HttpServer(HttpServerOptions options, std::vector<HttpRoute> routes);

  HttpServerOptions options_;
  std::vector<HttpRoute> routes_;
  std::unique_ptr<Loop> loop_;
  int port_ = 0;
};

// HttpStatusText: "OK", "Not Found", ... for the status line.
const char* HttpStatusText(int status);

}  // namespace deltaserve::api
