// Integration: gRPC over TLS and mutual TLS. Certificates are made for the test with the openssl
// command (a CA, a server certificate for 127.0.0.1, a client certificate, and a second CA that
// signs an impostor). With --tls-client-ca the server refuses plaintext, clients without a
// certificate, clients with a certificate from another CA and clients that do not trust its CA;
// a client with the right CA and certificate works, deltactl too; the plaintext --health-port
// answers probes. Without --tls-client-ca a TLS client needs no certificate.
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "tests/integration/rpc_helpers.h"
#include "tests/integration/server_process.h"
#include "tests/support/test_models.h"

namespace deltaserve::testing {
namespace {

std::string Read(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("tls");
    const std::string key = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::string script =
        "cd " + dir_ + " && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > san.ext && "
        "openssl req -x509" + key + " -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca && "
        "openssl req -x509" + key + " -keyout other-ca.key -out other-ca.pem -days 2 -subj /CN=other-ca && "
        "openssl req" + key + " -keyout server.key -out server.csr -subj /CN=localhost && "
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 "
        "-extfile san.ext && "
        "openssl req" + key + " -keyout client.key -out client.csr -subj /CN=client && "
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 && "
        "openssl req" + key + " -keyout impostor.key -out impostor.csr -subj /CN=impostor && "
        "openssl x509 -req -in impostor.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial -out impostor.pem "
        "-days 2";
    ASSERT_EQ(std::system((script + " > openssl.log 2>&1").c_str()), 0) << Read(dir_ + "/openssl.log");
  }

  client::ConnectOptions Options(const std::string& ca, const std::string& name) const {
    client::ConnectOptions options;
    options.tls_ca_pem = Read(dir_ + "/" + ca + ".pem");
    if (!name.empty()) {
      options.tls_cert_pem = Read(dir_ + "/" + name + ".pem");
      options.tls_key_pem = Read(dir_ + "/" + name + ".key");
    }
    return options;
  }

  static grpc::Status Call(DeltaserveClient& client) {
    v1::TokenizeRequest request;
    request.set_text("hello");
    v1::TokenizeResponse response;
    return client.Tokenize(request, &response);
  }

  std::string dir_;
};

TEST_F(TlsTest, MutualTlsAdmitsOnlyClientsWithACertificateFromItsCa) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir(), {"--tls-cert", dir_ + "/server.pem", "--tls-key", dir_ + "/server.key",
                                            "--tls-client-ca", dir_ + "/ca.pem", "--health-port", "0"}));
  auto trusted = DeltaserveClient::Connect(server.target(), Options("ca", "client"));
  grpc::Status status = Call(*trusted);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(RunStream(*trusted, Generate("hello", 2)).status.ok());

  auto plaintext = DeltaserveClient::Connect(server.target());
  auto without_certificate = DeltaserveClient::Connect(server.target(), Options("ca", ""));
  auto impostor = DeltaserveClient::Connect(server.target(), Options("ca", "impostor"));
  auto distrustful = DeltaserveClient::Connect(server.target(), Options("other-ca", "client"));
  for (DeltaserveClient* refused : {plaintext.get(), without_certificate.get(), impostor.get(), distrustful.get()}) {
    EXPECT_EQ(Call(*refused).error_code(), grpc::StatusCode::UNAVAILABLE);
  }

  // Probes use the plaintext health port.
  const std::string log = server.Log();
  const size_t at = log.find("health (plaintext) on port ");
  ASSERT_NE(at, std::string::npos) << log;
  const int health_port = std::atoi(log.c_str() + at + std::string("health (plaintext) on port ").size());
  auto probe = DeltaserveClient::Connect("127.0.0.1:" + std::to_string(health_port));
  client::HealthStatus health;
  ASSERT_TRUE(probe->Health("", &health).ok());
  EXPECT_EQ(health, client::HealthStatus::kServing);
  EXPECT_EQ(Call(*probe).error_code(), grpc::StatusCode::UNIMPLEMENTED) << "the probe port serves health only";

  std::string out, err;
  const std::string tls = " --tls-ca " + dir_ + "/ca.pem --tls-cert " + dir_ + "/client.pem --tls-key " + dir_ +
                          "/client.key";
  ASSERT_EQ(RunDeltactl("--target " + server.target() + tls + " health", &out, &err), 0) << err;
  EXPECT_EQ(out, "SERVING\n");
  EXPECT_EQ(RunDeltactl("--target " + server.target() + " --tls-cert " + dir_ + "/client.pem health", &out, &err), 2);
  EXPECT_NE(err.find("--tls-cert needs --tls-ca"), std::string::npos) << err;
}

TEST_F(TlsTest, ServerTlsNeedsNoClientCertificate) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir(), {"--tls-cert", dir_ + "/server.pem", "--tls-key", dir_ + "/server.key"}));
  auto client = DeltaserveClient::Connect(server.target(), Options("ca", ""));
  grpc::Status status = Call(*client);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Call(*DeltaserveClient::Connect(server.target())).error_code(), grpc::StatusCode::UNAVAILABLE);

  ServerProcess incomplete;
  EXPECT_FALSE(incomplete.Start(TinyModelDir(), {"--tls-cert", dir_ + "/server.pem"}));
  EXPECT_NE(incomplete.Log().find("give both --tls-cert and --tls-key"), std::string::npos) << incomplete.Log();
}

}  // namespace
}  // namespace deltaserve::testing
