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
  // StartServer starts the tiny demo model with `flags`. A server that does not start fails
  // every test of the suite (SetUp), rather than a fatal failure here, after which gtest would
  // report the tests as skipped and ctest would count them as skipped, not failed.
  static void StartServer(const std::vector<std::string>& flags = {}) {
    server_ = new ServerProcess();
    if (server_->Start(TinyModelDir(), flags)) {
      client_ = DeltaserveClient::Connect(server_->target()).release();
    } else {
      ADD_FAILURE() << "the suite's server did not start";
    }
  }
  void SetUp() override { ASSERT_NE(client_, nullptr) << "the suite's server did not start (see the suite's log)"; }
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
