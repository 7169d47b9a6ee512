#include "server/api/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/api/http_request_parser.h"

namespace deltaserve::api {
namespace {

std::string Head(int status, std::string_view content_type, const HttpHeaders& headers, bool http10,
                 bool keep_alive) {
  std::string head = absl::StrCat(http10 ? "HTTP/1.0 " : "HTTP/1.1 ", status, " ", HttpStatusText(status),
                                  "\r\nContent-Type: ", std::string(content_type), "\r\n");
  for (const auto& [name, value] : headers) absl::StrAppend(&head, name, ": ", value, "\r\n");
  if (!keep_alive) {
    head += "Connection: close\r\n";
  } else if (http10) {
    head += "Connection: keep-alive\r\n";
  }
  return head;
}

// BufferedResponse collects a whole response in memory: for the event loop's own answers
// (inline routes, errors, refusals). It cannot stream.
class BufferedResponse final : public HttpResponse {
 public:
  BufferedResponse(bool http10, bool keep_alive) : http10_(http10), keep_alive_(keep_alive) {}
  void Send(int status, std::string_view content_type, std::string_view body, const HttpHeaders& headers) override {
    if (!bytes_.empty()) return;
    bytes_ = Head(status, content_type, headers, http10_, keep_alive_);
    absl::StrAppend(&bytes_, "Content-Length: ", body.size(), "\r\n\r\n");
    bytes_.append(body.data(), body.size());
  }
  bool StartStream(std::string_view, const HttpHeaders&) override { return false; }
  bool WriteChunk(std::string_view) override { return false; }
  void EndStream() override {}
  std::string& bytes() { return bytes_; }

 private:
  bool http10_;
  bool keep_alive_;
  std::string bytes_;
};

// SocketResponse writes a worker's response straight to the connection's (non-blocking) socket,
// waiting at most write_timeout for each bit of progress.
class SocketResponse final : public HttpResponse {
 public:
  SocketResponse(int fd, bool http10, bool keep_alive, absl::Duration write_timeout)
      : fd_(fd), http10_(http10), keep_alive_(keep_alive),
        timeout_ms_(static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(write_timeout), 1, 1 << 30))) {}

  void Send(int status, std::string_view content_type, std::string_view body, const HttpHeaders& headers) override {
    if (started_) return;
    started_ = true;
    std::string head = Head(status, content_type, headers, http10_, keep_alive_);
    absl::StrAppend(&head, "Content-Length: ", body.size(), "\r\n\r\n");
    if (body.size() <= 16384) {
      head.append(body.data(), body.size());
      Write(head);
    } else if (Write(head)) {
      Write(body);
    }
    done_ = true;
  }

  bool StartStream(std::string_view content_type, const HttpHeaders& headers) override {
    if (started_) return false;
    started_ = true;
    streaming_ = true;
    // HTTP/1.0 has no chunked coding: the stream is the body up to the connection's close.
    if (http10_) keep_alive_ = false;
    std::string head = Head(200, content_type, headers, http10_, keep_alive_);
    head += http10_ ? "Cache-Control: no-cache\r\n\r\n" : "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    return Write(head);
  }

  bool WriteChunk(std::string_view data) override {
    if (!streaming_ || broken_) return false;
    if (data.empty()) return true;  // an empty chunk would end the stream
    if (http10_) return Write(data);
    std::string chunk = absl::StrCat(absl::Hex(data.size()), "\r\n");
    chunk.append(data.data(), data.size());
    chunk += "\r\n";
    return Write(chunk);
  }

  void EndStream() override {
    if (!streaming_ || broken_) return;
    if (!http10_) Write("0\r\n\r\n");
    streaming_ = false;
    done_ = true;
  }

  bool ClientGone() override {
    if (broken_) return true;
    pollfd poll_fd{fd_, POLLRDHUP, 0};
    return ::poll(&poll_fd, 1, 0) > 0 && (poll_fd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }

  bool started() const { return started_; }
  // Whether the connection can take another request: the response was whole and written.
  bool reusable() const { return keep_alive_ && done_ && !broken_; }

 private:
  bool Write(std::string_view data) {
    while (!broken_ && !data.empty()) {
      const ssize_t sent = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (sent > 0) {
        data.remove_prefix(static_cast<size_t>(sent));
        continue;
      }
      if (sent < 0 && errno == EINTR) continue;
      if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        pollfd poll_fd{fd_, POLLOUT, 0};
        if (::poll(&poll_fd, 1, timeout_ms_) > 0 && (poll_fd.revents & POLLOUT) != 0) continue;
      }
      broken_ = true;  // an error, a closed peer, or no progress within the write timeout
    }
    return !broken_;
  }

  int fd_;
  bool http10_;
  bool keep_alive_;
  int timeout_ms_;
  bool started_ = false;
  bool streaming_ = false;
  bool done_ = false;
  bool broken_ = false;
};

absl::Time Now() { return absl::Now(); }

}  // namespace

// The event loop: accepts, reads and parses requests, keeps the deadlines, answers inline routes
// and errors itself, and hands complete requests to workers (which hand the connection back).
class HttpServer::Loop {
 public:
  Loop(HttpServer* server, int listen_fd) : server_(server), options_(server->options_), listen_fd_(listen_fd) {}

  absl::Status Start() {
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_fd_ < 0 || wake_fd_ < 0) return absl::InternalError(absl::StrCat("epoll: ", std::strerror(errno)));
    Watch(listen_fd_, EPOLLIN, EPOLL_CTL_ADD);
    Watch(wake_fd_, EPOLLIN, EPOLL_CTL_ADD);
    thread_ = std::thread([this] { Run(); });
    return absl::OkStatus();
  }

  ~Loop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    Wake();
    if (thread_.joinable()) thread_.join();
    work_ready_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    for (auto& [fd, connection] : connections_) ::close(fd);
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

 private:
  enum class Phase { kWaiting, kReading, kRunning, kSending };

  struct Connection {
    int fd = -1;
    Phase phase = Phase::kWaiting;
    absl::Time deadline;
    absl::Time since;  // when the current phase began
    std::string in;    // received bytes not yet parsed (a pipelined next request)
    std::unique_ptr<HttpRequestParser> parser;
    int requests = 0;
    bool body_deadline_set = false;
    bool continue_sent = false;
    std::string out;  // what the loop is sending (kSending)
    size_t out_sent = 0;
    bool close_after_out = false;
    uint32_t events = 0;  // what epoll watches for it (0: not registered)
  };

  struct Job {
    Connection* connection;
    HttpRequest request;
    bool http10;
    bool keep_alive;
  };

  void Watch(int fd, uint32_t events, int operation) {
    epoll_event event{};
    event.events = events;
    event.data.fd = fd;
    ::epoll_ctl(epoll_fd_, operation, fd, &event);
  }

  void SetEvents(Connection* connection, uint32_t events) {
    if (connection->events == events) return;
    if (events == 0) {
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, connection->fd, nullptr);
    } else {
      Watch(connection->fd, events, connection->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD);
    }
    connection->events = events;
  }

  void Wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t written = ::write(wake_fd_, &one, sizeof(one));
  }

  void Run() {
    epoll_event events[128];
    absl::Time next_sweep = Now();
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) break;
      }
      const int count = ::epoll_wait(epoll_fd_, events, 128, 100);
      for (int i = 0; i < count; ++i) {
        const int fd = events[i].data.fd;
        if (fd == listen_fd_) {
          Accept();
        } else if (fd == wake_fd_) {
          uint64_t value;
          [[maybe_unused]] ssize_t read = ::read(wake_fd_, &value, sizeof(value));
        } else {
          auto found = connections_.find(fd);
          if (found == connections_.end()) continue;
          Connection* connection = found->second.get();
          if (connection->phase == Phase::kSending) {
            if ((events[i].events & (EPOLLERR | EPOLLHUP)) != 0) {
              Close(connection);
            } else {
              SendMore(connection);
            }
          } else if (connection->phase != Phase::kRunning) {
            OnReadable(connection);
          }
        }
      }
      TakeReturns();
      const absl::Time now = Now();
      if (now >= next_sweep) {
        Sweep(now);
        next_sweep = now + absl::Milliseconds(100);
      }
    }
  }

  void Accept() {
    while (true) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if ((errno == EMFILE || errno == ENFILE) && EvictOldest()) continue;
        if (errno == EMFILE || errno == ENFILE) {
          // No descriptor for it, and none to free: stop watching the port until the next sweep.
          Watch(listen_fd_, 0, EPOLL_CTL_MOD);
          accept_paused_ = true;
        }
        return;
      }
      if (static_cast<int>(connections_.size()) >= options_.max_connections && !EvictOldest()) {
        Refuse(fd);
        continue;
      }
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      auto connection = std::make_unique<Connection>();
      connection->fd = fd;
      const absl::Time now = Now();
      connection->since = now;
      connection->deadline = now + options_.header_timeout;
      connection->parser = std::make_unique<HttpRequestParser>(Limits());
      Connection* raw = connection.get();
      connections_[fd] = std::move(connection);
      SetEvents(raw, EPOLLIN | EPOLLRDHUP);
    }
  }

  HttpParseLimits Limits() const {
    HttpParseLimits limits;
    limits.max_body_bytes = options_.max_body_bytes;
    return limits;
  }

  // EvictOldest closes the connection with no request running that has waited longest.
  bool EvictOldest() {
    Connection* oldest = nullptr;
    for (auto& [fd, connection] : connections_) {
      if (connection->phase == Phase::kRunning) continue;
      if (oldest == nullptr || connection->since < oldest->since) oldest = connection.get();
    }
    if (oldest == nullptr) return false;
    Close(oldest);
    return true;
  }

  // Refuse answers a connection beyond the cap with 503 and closes it.
  void Refuse(int fd) {
    BufferedResponse response(false, false);
    options_.not_found(503,
                       absl::StrCat("the server has ", connections_.size(),
                                    " HTTP connections with requests running, its limit; retry shortly"),
                       response);
    SendNowAndClose(fd, response.bytes());
  }

  // SendNowAndClose: a best-effort answer on a connection about to close (what the socket
  // takes without waiting), after reading what the client sent so the close does not reset.
  static void SendNowAndClose(int fd, const std::string& bytes) {
    char drain[16384];
    while (::recv(fd, drain, sizeof(drain), MSG_DONTWAIT) > 0) {
    }
    [[maybe_unused]] ssize_t sent = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(fd, SHUT_WR);
    ::close(fd);
  }

  void Close(Connection* connection) {
    const int fd = connection->fd;
    SetEvents(connection, 0);
    ::close(fd);
    connections_.erase(fd);
  }

  void OnReadable(Connection* connection) {
    char buffer[65536];
    while (connection->phase == Phase::kWaiting || connection->phase == Phase::kReading) {
      const ssize_t read = ::recv(connection->fd, buffer, sizeof(buffer), 0);
      if (read > 0) {
        connection->in.append(buffer, static_cast<size_t>(read));
        if (!Parse(connection)) return;  // closed
        continue;
      }
      if (read < 0 && errno == EINTR) continue;
      if (read < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      Close(connection);  // the client closed (or the connection broke) before a whole request
      return;
    }
  }

  // Parse feeds buffered bytes to the parser and acts on what it finds; false when the
  // connection was closed.
  bool Parse(Connection* connection) {
    HttpRequestParser& parser = *connection->parser;
    const size_t used = parser.Feed(connection->in);
    connection->in.erase(0, used);
    const absl::Time now = Now();
    if (connection->phase == Phase::kWaiting && parser.started()) {
      connection->phase = Phase::kReading;
      if (connection->requests > 0) connection->deadline = now + options_.header_timeout;
    }
    switch (parser.state()) {
      case HttpRequestParser::State::kHead:
        return true;
      case HttpRequestParser::State::kBody:
        if (!connection->body_deadline_set) {
          connection->body_deadline_set = true;
          connection->deadline = now + options_.body_timeout;
        }
        if (parser.expects_continue() && !connection->continue_sent) {
          connection->continue_sent = true;
          static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
          [[maybe_unused]] ssize_t sent =
              ::send(connection->fd, kContinue.data(), kContinue.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        return true;
      case HttpRequestParser::State::kError: {
        BufferedResponse response(parser.http10(), false);
        options_.not_found(parser.error_status(), parser.error_message(), response);
        StartSending(connection, std::move(response.bytes()), true);
        return false;
      }
      case HttpRequestParser::State::kDone:
        Dispatch(connection);
        return false;
    }
    return true;
  }

  void Dispatch(Connection* connection) {
    HttpRequestParser& parser = *connection->parser;
    ++connection->requests;
    const bool keep_alive = parser.keep_alive() && connection->requests < options_.max_requests_per_connection;
    if (server_->IsInline(parser.request())) {
      BufferedResponse response(parser.http10(), keep_alive);
      server_->Dispatch(parser.request(), response);
      if (response.bytes().empty()) response.Send(500, "text/plain", "the handler sent no response\n", {});
      StartSending(connection, std::move(response.bytes()), !keep_alive);
      return;
    }
    connection->phase = Phase::kRunning;
    connection->since = Now();
    SetEvents(connection, 0);
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back({connection, std::move(parser.request()), parser.http10(), keep_alive});
    if (idle_workers_ == 0 && static_cast<int>(workers_.size()) < std::max(1, options_.threads)) {
      workers_.emplace_back([this] { Work(); });
    } else {
      work_ready_.notify_one();
    }
  }

  void StartSending(Connection* connection, std::string bytes, bool close_after) {
    connection->phase = Phase::kSending;
    connection->since = Now();
    connection->deadline = connection->since + options_.write_timeout;
    connection->out = std::move(bytes);
    connection->out_sent = 0;
    connection->close_after_out = close_after;
    SendMore(connection);
  }

  void SendMore(Connection* connection) {
    while (connection->out_sent < connection->out.size()) {
      const ssize_t sent = ::send(connection->fd, connection->out.data() + connection->out_sent,
                                  connection->out.size() - connection->out_sent, MSG_NOSIGNAL);
      if (sent > 0) {
        connection->out_sent += static_cast<size_t>(sent);
        continue;
      }
      if (sent < 0 && errno == EINTR) continue;
      if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        SetEvents(connection, EPOLLOUT);
        return;
      }
      Close(connection);
      return;
    }
    connection->out.clear();
    if (connection->close_after_out) {
      const int fd = connection->fd;
      SetEvents(connection, 0);
      connections_.erase(fd);
      SendNowAndClose(fd, "");
      return;
    }
    Reuse(connection);
  }

  // Reuse readies a connection for its next request (and parses one already received).
  void Reuse(Connection* connection) {
    connection->phase = Phase::kWaiting;
    connection->since = Now();
    connection->deadline = connection->since + options_.keep_alive_timeout;
    connection->parser = std::make_unique<HttpRequestParser>(Limits());
    connection->body_deadline_set = false;
    connection->continue_sent = false;
    SetEvents(connection, EPOLLIN | EPOLLRDHUP);
    // A pipelined request already read; what is still in the socket wakes epoll again.
    if (!connection->in.empty()) Parse(connection);
  }

  void Work() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      ++idle_workers_;
      work_ready_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      --idle_workers_;
      if (jobs_.empty()) return;  // stopping, and nothing left to answer
      Job job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      SocketResponse response(job.connection->fd, job.http10, job.keep_alive, options_.write_timeout);
      server_->Dispatch(job.request, response);
      if (!response.started()) response.Send(500, "text/plain", "the handler sent no response\n", {});
      const bool reusable = response.reusable();
      lock.lock();
      returns_.push_back({job.connection, reusable});
      Wake();
    }
  }

  void TakeReturns() {
    std::vector<std::pair<Connection*, bool>> returns;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      returns.swap(returns_);
    }
    for (auto [connection, reusable] : returns) {
      if (!reusable) {
        const int fd = connection->fd;
        connections_.erase(fd);
        SendNowAndClose(fd, "");
        continue;
      }
      Reuse(connection);
    }
  }

  // Sweep ends connections past their deadline.
  void Sweep(absl::Time now) {
    if (accept_paused_) {
      accept_paused_ = false;
      Watch(listen_fd_, EPOLLIN, EPOLL_CTL_MOD);
    }
    std::vector<Connection*> expired;
    for (auto& [fd, connection] : connections_) {
      if (connection->phase != Phase::kRunning && now >= connection->deadline) expired.push_back(connection.get());
    }
    for (Connection* connection : expired) {
      if (connection->phase == Phase::kReading) {
        const bool in_body = connection->body_deadline_set;
        BufferedResponse response(connection->parser->http10(), false);
        options_.not_found(408,
                           absl::StrCat("the request ", in_body ? "body" : "head", " did not arrive within ",
                                        absl::FormatDuration(in_body ? options_.body_timeout : options_.header_timeout)),
                           response);
        const int fd = connection->fd;
        SetEvents(connection, 0);
        connections_.erase(fd);
        SendNowAndClose(fd, response.bytes());
      } else {
        Close(connection);
      }
    }
  }

  HttpServer* server_;
  const HttpServerOptions& options_;
  int listen_fd_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  bool accept_paused_ = false;
  std::thread thread_;
  std::map<int, std::unique_ptr<Connection>> connections_;  // event-loop thread only

  std::mutex mutex_;  // guards what follows
  bool stopping_ = false;
  std::deque<Job> jobs_;
  std::vector<std::pair<Connection*, bool>> returns_;
  std::condition_variable work_ready_;
  int idle_workers_ = 0;
  std::vector<std::thread> workers_;  // grown on demand up to options_.threads
};

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
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
  }
}

HttpServer::HttpServer(HttpServerOptions options, std::vector<HttpRoute> routes)
    : options_(std::move(options)), routes_(std::move(routes)) {}

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

bool HttpServer::IsInline(const HttpRequest& request) const {
  for (const HttpRoute& route : routes_) {
    if (route.path == request.path && route.method == request.method) return route.inline_route;
  }
  return true;  // 404 and 405 answers are cheap
}

namespace {

// Listen binds a non-blocking listening socket to host:port.
absl::StatusOr<int> Listen(const std::string& host, int port, std::string* shown) {
  std::string bare = host == "localhost" ? "127.0.0.1" : host;
  if (absl::StartsWith(bare, "[") && absl::EndsWith(bare, "]")) bare = bare.substr(1, bare.size() - 2);
  *shown = absl::StrCat(absl::StrContains(bare, ':') ? absl::StrCat("[", bare, "]") : bare, ":", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (::getaddrinfo(bare.empty() ? nullptr : bare.c_str(), service.c_str(), &hints, &found) != 0 || found == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot serve HTTP on ", *shown, ": the host does not resolve"));
  }
  int fd = -1;
  for (addrinfo* address = found; address != nullptr && fd < 0; address = address->ai_next) {
    fd = ::socket(address->ai_family, address->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, address->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, address->ai_addr, address->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(found);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve HTTP on ", *shown, " (the address is taken or not local)"));
  }
  return fd;
}

int BoundPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return 0;
  if (address.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
  if (address.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
  return 0;
}

// RoomForConnections raises the descriptor limit toward what `connections` need (plus room for
// the rest of the process) and returns how many connections the limit allows.
int RoomForConnections(int connections) {
  constexpr rlim_t kReserve = 256;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return connections;
  const rlim_t wanted = static_cast<rlim_t>(connections) + kReserve;
  if (limit.rlim_cur < wanted) {
    limit.rlim_cur = limit.rlim_max == RLIM_INFINITY ? wanted : std::min(limit.rlim_max, wanted);
    ::setrlimit(RLIMIT_NOFILE, &limit);
    ::getrlimit(RLIMIT_NOFILE, &limit);
  }
  if (limit.rlim_cur >= wanted) return connections;
  return static_cast<int>(std::max<rlim_t>(16, limit.rlim_cur > kReserve ? limit.rlim_cur - kReserve : 16));
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerOptions options, std::vector<HttpRoute> routes) {
  if (!options.not_found) {
    options.not_found = [](int status, const std::string& message, HttpResponse& response) {
      response.Send(status, "text/plain; charset=utf-8", message + "\n");
    };
  }
  options.max_connections = RoomForConnections(std::max(1, options.max_connections));
  std::unique_ptr<HttpServer> server(new HttpServer(std::move(options), std::move(routes)));
  std::string shown;
  absl::StatusOr<int> fd = Listen(server->options_.host, server->options_.port, &shown);
  if (!fd.ok()) return fd.status();
  server->port_ = BoundPort(*fd);
  server->loop_ = std::make_unique<Loop>(server.get(), *fd);
  if (absl::Status started = server->loop_->Start(); !started.ok()) return started;
  return server;
}

HttpServer::~HttpServer() { loop_.reset(); }

}  // namespace deltaserve::api
