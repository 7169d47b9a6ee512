// MetricsHttpServer: serves GET /metrics (Prometheus text format 0.0.4) from a registry on one
// background thread. It replaces prometheus-cpp's civetweb-based Exposer, whose worker threads
// fail to start inside this process (pthread_create reports an error once libtorch is loaded
// and used). Requests are read with a 2 s timeout and a 16 KiB bound; one connection at a time
// (scrapes are rare and small). Start() binds (port 0 = pick one); the destructor stops it.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <prometheus/registry.h>

#include "absl/status/statusor.h"

namespace deltaserve::telemetry {

class MetricsHttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer(int listen_fd, int port, std::shared_ptr<prometheus::Registry> registry);
  void Serve();
  void HandleConnection(int fd);

  int listen_fd_;
  int port_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace deltaserve::telemetry
