// ServingState: shared between main's signal handling and the services. Once draining, new
// requests are refused with UNAVAILABLE while accepted ones finish. Thread-safe.
#pragma once

#include <atomic>

namespace deltaserve::api {

class ServingState {
 public:
  void StartDraining() { draining_.store(true); }
  bool draining() const { return draining_.load(); }

 private:
  std::atomic<bool> draining_{false};
};

}  // namespace deltaserve::api
