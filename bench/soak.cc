// deltaserve-soak --target 127.0.0.1:PORT --http-port N --metrics-port N --server-pid PID
//   [--streams 64] [--duration-seconds 600]
// A bounded soak of a running deltaserve on loopback: `streams` clients send requests back to
// back for `duration-seconds`. Of the requests, 10 % are cancelled by the client after a few
// tokens, 10 % carry a short deadline (50-300 ms), 20 % go over the OpenAI HTTP API streamed
// (half of those disconnect after the first event), the rest are plain gRPC Generates. Prints
// the server's RSS each minute, the outcome classes, and, once the traffic has stopped, the
// running requests and KV cache use (which must be back to 0).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "client/deltaserve_client.h"
#include "server/common/flag_names.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "server gRPC address (loopback)");
ABSL_FLAG(int, http_port, 8000, "server HTTP API port");
ABSL_FLAG(int, metrics_port, 9464, "server metrics port");
ABSL_FLAG(int, server_pid, 0, "server process id (for its RSS)");
ABSL_FLAG(int, streams, 64, "concurrent clients");
ABSL_FLAG(int, duration_seconds, 600, "how long to send");
ABSL_FLAG(int, max_tokens, 48, "tokens per request");

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = deltaserve::v1;

std::mutex outcomes_mutex;
std::map<std::string, int64_t> outcomes;
void Count(const std::string& outcome) {
  std::lock_guard<std::mutex> lock(outcomes_mutex);
  ++outcomes[outcome];
}

int64_t RssKiB(int pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// HttpGetBody: the body of a GET on loopback ("" on failure).
std::string HttpGetBody(int port, const std::string& path) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string reply;
  char buffer[16384];
  ssize_t n;
  while ((n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0) reply.append(buffer, static_cast<size_t>(n));
  ::close(fd);
  const size_t body = reply.find("\r\n\r\n");
  return body == std::string::npos ? "" : reply.substr(body + 4);
}

double Sample(const std::string& scrape, const std::string& series) {
  std::istringstream lines(scrape);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

void HttpStream(int port, int index, bool disconnect) {
  const int fd = Connect(port);
  if (fd < 0) return Count("http: cannot connect");
  const std::string body = "{\"prompt\": \"soak request " + std::to_string(index) + "\", \"max_tokens\": " +
                           std::to_string(absl::GetFlag(FLAGS_max_tokens)) + ", \"stream\": true}";
  const std::string request = "POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                              "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string reply;
  char buffer[4096];
  ssize_t n;
  while ((n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0) {
    reply.append(buffer, static_cast<size_t>(n));
    if (disconnect && reply.find("data: ") != std::string::npos) break;
  }
  ::close(fd);
  const std::string status = reply.size() >= 12 ? reply.substr(9, 3) : "none";
  if (disconnect && status == "200") return Count("http: disconnected after the first event");
  if (status == "200" && reply.find("data: [DONE]") != std::string::npos) return Count("http: 200, whole stream");
  Count("http: status " + status);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> storage;
  std::vector<char*> arguments = deltaserve::common::NormalizeFlagNames(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  const int pid = absl::GetFlag(FLAGS_server_pid);
  auto client = deltaserve::client::DeltaserveClient::Connect(absl::GetFlag(FLAGS_target));
  if (!client->WaitForReady(std::chrono::seconds(10))) return 1;
  const auto end = Clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_duration_seconds));
  std::printf("RSS at the start: %.1f MiB\n", RssKiB(pid) / 1024.0);
  std::fflush(stdout);
  std::atomic<int> counter{0};
  std::vector<std::thread> threads;
  for (int s = 0; s < absl::GetFlag(FLAGS_streams); ++s) {
    threads.emplace_back([&, s] {
      std::mt19937 random(s * 7919 + 1);
      while (Clock::now() < end) {
        const int index = counter++;
        const int kind = static_cast<int>(random() % 10);
        if (kind < 2) {
          HttpStream(absl::GetFlag(FLAGS_http_port), index, kind == 0);
          continue;
        }
        v1::GenerateRequest request;
        request.set_prompt("soak request " + std::to_string(index));
        request.mutable_sampling()->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
        request.mutable_sampling()->set_temperature(0.8f);
        int seen = 0;
        const auto timeout = kind == 2 ? std::chrono::milliseconds(50 + random() % 250) : std::chrono::milliseconds(0);
        const bool cancel = kind == 3;
        grpc::Status status = client->Generate(
            request, [&](const v1::GenerateResponse& response) { seen += response.token_ids_size(); }, timeout,
            [&] { return cancel && seen >= 3; });
        const char* what = cancel ? "grpc, cancelled by the client: " : kind == 2 ? "grpc, short deadline: " : "grpc: ";
        Count(what + std::to_string(static_cast<int>(status.error_code())) + " " +
              (status.ok() ? "OK" : status.error_message().substr(0, 60)));
      }
    });
  }
  for (int minute = 1; Clock::now() < end; ++minute) {
    const auto next = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < next && Clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (Clock::now() < end) std::printf("RSS after %d min: %.1f MiB\n", minute, RssKiB(pid) / 1024.0);
    std::fflush(stdout);
  }
  for (std::thread& thread : threads) thread.join();
  std::this_thread::sleep_for(std::chrono::seconds(3));
  const std::string scrape = HttpGetBody(absl::GetFlag(FLAGS_metrics_port), "/metrics");
  std::printf("RSS at the end: %.1f MiB\n", RssKiB(pid) / 1024.0);
  std::printf("after the traffic: running %g, waiting %g, KV cache use %g\n",
              Sample(scrape, "deltaserve_requests_running"), Sample(scrape, "deltaserve_requests_waiting"),
              Sample(scrape, "deltaserve_kv_cache_usage_ratio"));
  std::printf("requests sent: %d; outcomes (gRPC codes: 1 CANCELLED, 4 DEADLINE_EXCEEDED, 8 RESOURCE_EXHAUSTED):\n",
              counter.load());
  for (const auto& [outcome, count] : outcomes) std::printf("  %8ld  %s\n", static_cast<long>(count), outcome.c_str());
  return 0;
}
