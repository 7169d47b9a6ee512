// SharedServerTest: one real server and one client for a whole test suite (starting a server
// per test would dominate the suite's time). A suite derives with itself as the parameter,
// so that each suite has its own server, and calls StartServer from SetUpTestSuite:
//   class AdapterServerTest : public SharedServerTest<AdapterServerTest> {
//     static void SetUpTestSuite() { StartServer({"--adapter-dir", dir}); }
//   };
#pragma once

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/integration/rpc_helpers.h"
#include "tests/integration/server_process.h"
#include "tests/support/test_models.h"

namespace deltaserve::testing {

template <typename Suite>
class SharedServerTest : public ::testing::Test {
 protected:
  // StartServer starts the tiny demo model with `flags`; a failure fails the suite's set-up.
  static void StartServer(const std::vector<std::string>& flags = {}) {
    server_ = new ServerProcess();
    ASSERT_TRUE(server_->Start(TinyModelDir(), flags));
    client_ = DeltaserveClient::Connect(server_->target()).release();
  }
  static void TearDownTestSuite() {
    delete client_;
    delete server_;
    client_ = nullptr;
    server_ = nullptr;
  }
  static inline ServerProcess* server_ = nullptr;
  static inline DeltaserveClient* client_ = nullptr;
};

}  // namespace deltaserve::testing
