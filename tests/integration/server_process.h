// ServerProcess: runs the real deltaserve binary as a child process on loopback for integration
// tests. Start() waits for its "serving ... on HOST:PORT, metrics on port N, http on port M" line; the
// destructor kills it if still running. HttpGet fetches a path from a loopback port.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace deltaserve::testing {

class ServerProcess {
 public:
  // Starts DELTASERVE_SERVER_BINARY with --model-dir, --port 0, --metrics-port 0, --http-port 0, a fresh
  // --data-dir and `extra_flags`. Returns false (with the log) when it did not come up in time.
  bool Start(const std::string& model_dir, const std::vector<std::string>& extra_flags = {});
  ~ServerProcess();

  void Signal(int signal_number);
  // WaitForExit returns the exit code, or -1 on timeout (or death by signal).
  int WaitForExit(int timeout_seconds);

  const std::string& target() const { return target_; }
  int metrics_port() const { return metrics_port_; }
  int http_port() const { return http_port_; }
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  std::string target_;
  int metrics_port_ = 0;
  int http_port_ = 0;
  std::string log_path_;
};

// HttpGet returns the body of GET http://127.0.0.1:port/path ("" on failure).
std::string HttpGet(int port, const std::string& path);

}  // namespace deltaserve::testing
