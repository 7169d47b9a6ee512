// The HTTP front over real loopback sockets: idle and slow connections cannot starve it, the
// connection cap refuses at once, keep-alive and pipelining work, and handlers see a client leave.
#include "server/api/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace deltaserve::api {
namespace {

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void SendAll(int fd, const std::string& text) {
  size_t sent = 0;
  while (sent < text.size()) {
    const ssize_t n = ::send(fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

// ReadFor reads what arrives within `timeout` (stopping early at the connection's end, or once
// `enough` appears).
std::string ReadFor(int fd, absl::Duration timeout, const std::string& enough = "", bool* closed = nullptr) {
  std::string text;
  const absl::Time end = absl::Now() + timeout;
  if (closed != nullptr) *closed = false;
  while (absl::Now() < end) {
    pollfd poll_fd{fd, POLLIN, 0};
    const int ready = ::poll(&poll_fd, 1, static_cast<int>(absl::ToInt64Milliseconds(end - absl::Now())) + 1);
    if (ready <= 0) continue;
    char buffer[4096];
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) {
      if (closed != nullptr) *closed = true;
      break;
    }
    text.append(buffer, static_cast<size_t>(n));
    if (!enough.empty() && text.find(enough) != std::string::npos) break;
  }
  return text;
}

int CountOf(const std::string& text, const std::string& part) {
  int count = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++count;
  return count;
}

class HttpServerSocketTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions options = {}) {
    std::vector<HttpRoute> routes = {
        {"GET", "/health", [](const HttpRequest&, HttpResponse& r) { r.Send(200, "text/plain", "serving"); }, true},
        {"GET", "/work",
         [](const HttpRequest& request, HttpResponse& r) { r.Send(200, "text/plain", "worked " + request.query); }},
        {"POST", "/echo", [](const HttpRequest& request, HttpResponse& r) { r.Send(200, "text/plain", request.body); }},
        {"GET", "/block",
         [this](const HttpRequest&, HttpResponse& r) {
           ++blocked_;
           release_.WaitForNotification();
           r.Send(200, "text/plain", "released");
         }},
        {"GET", "/stream",
         [](const HttpRequest&, HttpResponse& r) {
           r.StartStream("text/event-stream");
           r.WriteChunk("one,");
           r.WriteChunk("two");
           r.EndStream();
         }},
        {"GET", "/wait-for-leave",
         [this](const HttpRequest&, HttpResponse& r) {
           const absl::Time end = absl::Now() + absl::Seconds(10);
           while (!r.ClientGone() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(10));
           saw_leave_ = r.ClientGone();
           left_.Notify();
         }},
    };
    absl::StatusOr<std::unique_ptr<HttpServer>> started = HttpServer::Start(options, std::move(routes));
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = std::move(*started);
  }
  void TearDown() override {
    if (!release_.HasBeenNotified()) release_.Notify();
    server_.reset();
    for (int fd : open_) ::close(fd);
  }
  int Open() {
    const int fd = Connect(server_->port());
    if (fd >= 0) open_.push_back(fd);
    return fd;
  }
  // Get sends one request on a new connection and reads the answer.
  std::string Get(const std::string& path, absl::Duration timeout = absl::Seconds(5)) {
    const int fd = Open();
    SendAll(fd, "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    return ReadFor(fd, timeout);
  }

  std::unique_ptr<HttpServer> server_;
  std::vector<int> open_;
  std::atomic<int> blocked_{0};
  absl::Notification release_;
  std::atomic<bool> saw_leave_{false};
  absl::Notification left_;
};

TEST_F(HttpServerSocketTest, IdleConnectionsDoNotStarveHealthOrRequests) {
  HttpServerOptions options;
  options.threads = 4;
  StartServer(options);
  // Far more idle connections than worker threads (civetweb's thread per connection answered
  // nothing until they timed out).
  for (int i = 0; i < 300; ++i) ASSERT_GE(Open(), 0);
  SendAll(open_[5], "GET /hea");  // and some that send half a head
  SendAll(open_[6], "POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc");
  const absl::Time started = absl::Now();
  const std::string health = Get("/health");
  EXPECT_NE(health.find("200 OK"), std::string::npos) << health;
  EXPECT_NE(health.find("serving"), std::string::npos);
  const std::string work = Get("/work?n=1");
  EXPECT_NE(work.find("worked n=1"), std::string::npos) << work;
  EXPECT_LT(absl::Now() - started, absl::Seconds(2));
}

TEST_F(HttpServerSocketTest, ANewConnectionAtTheCapTakesTheOldestIdleOnesPlace) {
  HttpServerOptions options;
  options.max_connections = 8;
  StartServer(options);
  for (int i = 0; i < 8; ++i) ASSERT_GE(Open(), 0);
  absl::SleepFor(absl::Milliseconds(100));  // the loop accepts them
  const std::string health = Get("/health");
  EXPECT_NE(health.find("200 OK"), std::string::npos) << health;
  bool closed = false;
  ReadFor(open_[0], absl::Seconds(2), "", &closed);
  EXPECT_TRUE(closed) << "the oldest idle connection is closed to make room";
}

TEST_F(HttpServerSocketTest, BeyondTheCapWithEveryRequestRunningTheAnswerIsAnImmediate503) {
  HttpServerOptions options;
  options.max_connections = 3;
  StartServer(options);
  std::vector<int> busy;
  for (int i = 0; i < 3; ++i) {
    busy.push_back(Open());
    SendAll(busy.back(), "GET /block HTTP/1.1\r\nHost: x\r\n\r\n");
  }
  const absl::Time wait_end = absl::Now() + absl::Seconds(5);
  while (blocked_ < 3 && absl::Now() < wait_end) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(blocked_, 3);
  const absl::Time started = absl::Now();
  const std::string refused = Get("/work");
  EXPECT_LT(absl::Now() - started, absl::Seconds(1));
  EXPECT_NE(refused.find("503"), std::string::npos) << refused;
  EXPECT_NE(refused.find("retry"), std::string::npos) << refused;
  release_.Notify();
  for (int fd : busy) EXPECT_NE(ReadFor(fd, absl::Seconds(5), "released").find("released"), std::string::npos);
}

TEST_F(HttpServerSocketTest, ASlowHeadIsAnswered408AtItsDeadlineEvenWhileItTrickles) {
  HttpServerOptions options;
  options.header_timeout = absl::Milliseconds(400);
  StartServer(options);
  const int fd = Open();
  const absl::Time started = absl::Now();
  std::string answer;
  bool closed = false;
  for (char c : std::string("GET /work HTTP/1.1\r\nX-Slow: abcdefghijklmnopqrstuvwxyz")) {
    SendAll(fd, std::string(1, c));
    answer += ReadFor(fd, absl::Milliseconds(40), "", &closed);
    if (closed) break;
  }
  if (!closed) answer += ReadFor(fd, absl::Seconds(2), "", &closed);
  EXPECT_TRUE(closed);
  EXPECT_NE(answer.find("408"), std::string::npos) << answer;
  EXPECT_LT(absl::Now() - started, absl::Seconds(2));
  // A connection that never sends a byte is closed at the same deadline.
  const int idle = Open();
  ReadFor(idle, absl::Seconds(2), "", &closed);
  EXPECT_TRUE(closed);
}

TEST_F(HttpServerSocketTest, KeepAliveServesSeveralRequestsUpToItsLimitsAndPipelines) {
  HttpServerOptions options;
  options.max_requests_per_connection = 3;
  options.keep_alive_timeout = absl::Milliseconds(300);
  StartServer(options);
  const int fd = Open();
  SendAll(fd, "GET /work?a HTTP/1.1\r\n\r\nPOST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
  std::string both = ReadFor(fd, absl::Seconds(5), "hello");
  EXPECT_NE(both.find("worked a"), std::string::npos) << both;
  EXPECT_LT(both.find("worked a"), both.find("hello"));
  EXPECT_EQ(both.find("Connection: close"), std::string::npos);
  SendAll(fd, "GET /health HTTP/1.1\r\n\r\n");  // the third: the last this connection takes
  bool closed = false;
  const std::string third = ReadFor(fd, absl::Seconds(5), "", &closed);
  EXPECT_NE(third.find("serving"), std::string::npos) << third;
  EXPECT_NE(third.find("Connection: close"), std::string::npos) << third;
  EXPECT_TRUE(closed);
  // An idle keep-alive connection closes after keep_alive_timeout.
  const int idle = Open();
  SendAll(idle, "GET /work HTTP/1.1\r\n\r\n");
  ReadFor(idle, absl::Seconds(2), "worked");
  ReadFor(idle, absl::Seconds(3), "", &closed);
  EXPECT_TRUE(closed);
}

TEST_F(HttpServerSocketTest, ChunkedBodiesExpectContinueAndStreamsForBothVersions) {
  StartServer();
  const int fd = Open();
  SendAll(fd, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_NE(ReadFor(fd, absl::Seconds(2), "\r\n\r\n").find("100 Continue"), std::string::npos);
  SendAll(fd, "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
  EXPECT_NE(ReadFor(fd, absl::Seconds(2), "abcde").find("abcde"), std::string::npos);

  const std::string stream11 = Get("/stream");
  EXPECT_NE(stream11.find("Transfer-Encoding: chunked"), std::string::npos) << stream11;
  EXPECT_NE(stream11.find("4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n"), std::string::npos) << stream11;
  const int old = Open();
  SendAll(old, "GET /stream HTTP/1.0\r\n\r\n");
  bool closed = false;
  const std::string stream10 = ReadFor(old, absl::Seconds(2), "", &closed);
  EXPECT_TRUE(closed);
  EXPECT_EQ(stream10.find("chunked"), std::string::npos) << stream10;
  EXPECT_EQ(stream10.substr(stream10.find("\r\n\r\n") + 4), "one,two");
}

TEST_F(HttpServerSocketTest, MalformedRequestsGetTheirStatusAndTheConnectionCloses) {
  StartServer();
  const int fd = Open();
  SendAll(fd, "GET / HTTP/1.1\r\nX-Bad: a\x01" "b\r\n\r\nGET /health HTTP/1.1\r\n\r\n");
  bool closed = false;
  const std::string answer = ReadFor(fd, absl::Seconds(2), "", &closed);
  EXPECT_TRUE(closed);
  EXPECT_NE(answer.find("400 Bad Request"), std::string::npos) << answer;
  EXPECT_NE(answer.find("control character"), std::string::npos) << answer;
  EXPECT_EQ(CountOf(answer, "HTTP/1.1"), 1) << "nothing after a malformed request is answered";
  EXPECT_NE(Get("/nowhere").find("404"), std::string::npos);
}

TEST_F(HttpServerSocketTest, AHandlerSeesItsClientLeave) {
  StartServer();
  const int fd = Open();
  SendAll(fd, "GET /wait-for-leave HTTP/1.1\r\n\r\n");
  absl::SleepFor(absl::Milliseconds(200));
  ::shutdown(fd, SHUT_RDWR);
  ASSERT_TRUE(left_.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_TRUE(saw_leave_);
}

}  // namespace
}  // namespace deltaserve::api
