#include "server/api/http_server.h"

#include <civetweb.h>
#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

// civetweb starts its threads with a fixed 100 KiB stack (pthread_attr_setstacksize with a
// size compiled into Debian's libcivetweb). glibc carves each thread's static TLS out of that
// stack, and libtorch's libraries need more static TLS than that leaves, so pthread_create fails
// ("Cannot create threads") in this process. Defining the function here (the executable's
// definition wins over libc's for every library) raises requests below 1 MiB to 1 MiB and passes
// the rest through unchanged.
extern "C" int pthread_attr_setstacksize(pthread_attr_t* attributes, size_t size) {
  using Function = int (*)(pthread_attr_t*, size_t);
  static const Function real = reinterpret_cast<Function>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  constexpr size_t kFloor = size_t{1} << 20;
  return real(attributes, std::max(size, kFloor));
}

namespace deltaserve::api {
namespace {

std::once_flag library_once;

// CivetResponse writes a handler's response to a civetweb connection.
class CivetResponse final : public HttpResponse {
 public:
  explicit CivetResponse(mg_connection* connection) : connection_(connection) {}

  void Send(int status, std::string_view content_type, std::string_view body, const HttpHeaders& headers) override {
    if (started_) return;
    started_ = true;
    status_ = status;
    std::string head = Head(status, content_type, headers);
    absl::StrAppend(&head, "Content-Length: ", body.size(), "\r\n\r\n");
    if (mg_write(connection_, head.data(), head.size()) > 0 && !body.empty()) {
      mg_write(connection_, body.data(), body.size());
    }
  }

  bool StartStream(std::string_view content_type, const HttpHeaders& headers) override {
    if (started_) return false;
    started_ = true;
    streaming_ = true;
    status_ = 200;
    std::string head = Head(200, content_type, headers);
    head += "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    broken_ = mg_write(connection_, head.data(), head.size()) <= 0;
    return !broken_;
  }

  bool WriteChunk(std::string_view data) override {
    if (!streaming_ || broken_) return false;
    if (data.empty()) return true;  // an empty chunk would end the stream
    broken_ = mg_send_chunk(connection_, data.data(), static_cast<unsigned int>(data.size())) <= 0;
    return !broken_;
  }

  void EndStream() override {
    if (!streaming_ || broken_) return;
    mg_send_chunk(connection_, "", 0);
    streaming_ = false;
  }

  int status() const { return status_; }
  bool started() const { return started_; }

 private:
  static std::string Head(int status, std::string_view content_type, const HttpHeaders& headers) {
    std::string head = absl::StrCat("HTTP/1.1 ", status, " ", HttpStatusText(status), "\r\nContent-Type: ",
                                    std::string(content_type), "\r\n");
    for (const auto& [name, value] : headers) absl::StrAppend(&head, name, ": ", value, "\r\n");
    return head;
  }

  mg_connection* connection_;
  bool started_ = false;
  bool streaming_ = false;
  bool broken_ = false;
  int status_ = 0;
};

int HandleRequest(mg_connection* connection) {
  const mg_request_info* info = mg_get_request_info(connection);
  const auto* server = static_cast<const HttpServer*>(info->user_data);
  CivetResponse response(connection);
  HttpRequest request;
  request.method = info->request_method != nullptr ? info->request_method : "";
  request.path = info->local_uri != nullptr ? info->local_uri : "";
  request.query = info->query_string != nullptr ? info->query_string : "";
  for (int i = 0; i < info->num_headers; ++i) {
    request.headers.emplace_back(info->http_headers[i].name, info->http_headers[i].value);
  }
  const int64_t limit = server->options().max_body_bytes;
  if (info->content_length > limit) {
    server->options().not_found(413, absl::StrCat("the request body is larger than ", limit, " bytes"), response);
    return 413;
  }
  char buffer[16384];
  while (true) {
    const int read = mg_read(connection, buffer, sizeof(buffer));
    if (read <= 0) break;
    request.body.append(buffer, static_cast<size_t>(read));
    if (static_cast<int64_t>(request.body.size()) > limit) {
      server->options().not_found(413, absl::StrCat("the request body is larger than ", limit, " bytes"), response);
      return 413;
    }
  }
  server->Dispatch(request, response);
  if (!response.started()) response.Send(500, "text/plain", "the handler sent no response\n", {});
  return response.status() > 0 ? response.status() : 200;
}

}  // namespace

std::string HttpRequest::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, absl::string_view(name.data(), name.size()))) return value;
  }
  return "";
}

const char* HttpStatusText(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
  }
}

void HttpServer::Dispatch(const HttpRequest& request, HttpResponse& response) const {
  bool path_known = false;
  for (const HttpRoute& route : routes_) {
    if (route.path != request.path) continue;
    path_known = true;
    if (route.method == request.method) {
      route.handler(request, response);
      return;
    }
  }
  if (path_known) {
    options_.not_found(405, absl::StrCat(request.method, " is not allowed on ", request.path), response);
  } else {
    options_.not_found(404, absl::StrCat("no route for ", request.method, " ", request.path), response);
  }
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerOptions options, std::vector<HttpRoute> routes) {
  std::call_once(library_once, [] { mg_init_library(0); });
  if (!options.not_found) {
    options.not_found = [](int status, const std::string& message, HttpResponse& response) {
      response.Send(status, "text/plain; charset=utf-8", message + "\n");
    };
  }
  std::unique_ptr<HttpServer> server(new HttpServer(std::move(options), std::move(routes)));
  const std::string& host = server->options_.host;
  const std::string bound_host = host == "localhost" ? "127.0.0.1" : host;
  const std::string listening = absl::StrCat(
      absl::StrContains(bound_host, ':') && !absl::StartsWith(bound_host, "[") ? absl::StrCat("[", bound_host, "]")
                                                                               : bound_host,
      ":", server->options_.port);
  const std::string threads = std::to_string(std::max(1, server->options_.threads));
  const char* configuration[] = {"listening_ports", listening.c_str(), "num_threads", threads.c_str(),
                                 "enable_keep_alive", "yes", "request_timeout_ms", "30000", nullptr};
  mg_callbacks callbacks{};
  callbacks.begin_request = HandleRequest;
  callbacks.log_message = [](const mg_connection*, const char*) { return 1; };  // errors come back as a status
  server->context_ = mg_start(&callbacks, server.get(), configuration);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot serve HTTP on ", listening,
                                               " (the address is taken or not local)"));
  }
  mg_server_port ports[4] = {};
  if (mg_get_server_ports(server->context_, 4, ports) < 1) {
    return absl::InternalError(absl::StrCat("HTTP on ", listening, ": no listening port"));
  }
  server->port_ = ports[0].port;
  return server;
}

HttpServer::~HttpServer() {
  if (context_ != nullptr) mg_stop(context_);
}

}  // namespace deltaserve::api
