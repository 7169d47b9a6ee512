// The server configuration file and API-key authentication: syntax and schema errors name the
// line and column, invalid values name the tenant, keys authenticate by their SHA-256 digest
// (several per tenant for rotation), everything else is UNAUTHENTICATED with one message, an
// open server (no tenants) lets everyone in as an admin, and a reload swaps the tenants or,
// when the file is invalid, keeps the old ones.
#include "server/auth/authenticator.h"

#include <gtest/gtest.h>

#include "server/auth/server_config.h"
#include "server/common/file_util.h"
#include "server/common/sha256.h"
#include "tests/support/test_models.h"

namespace deltaserve::auth {
namespace {

std::string Config(const std::string& acme_key, const std::string& ops_key) {
  return "tenants { name: \"acme\" role: TENANT api_key_sha256: \"" + ApiKeyDigest(acme_key) +
         "\" api_key_sha256: \"" + ApiKeyDigest(acme_key + "-next") +
         "\" namespaces: \"acme\" namespaces: \"acme-lab\" }\n"
         "tenants { name: \"ops\" role: ADMIN api_key_sha256: \"" + ApiKeyDigest(ops_key) + "\" }\n";
}

TEST(ServerConfigTest, ErrorsSayWhereAndWhat) {
  auto syntax = ParseServerConfig("tenants {\n  name: \"acme\"\n  rol: TENANT\n}\n", "config.textproto");
  EXPECT_EQ(syntax.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(syntax.status().message().find("config.textproto:3:"), std::string::npos) << syntax.status();
  EXPECT_NE(syntax.status().message().find("rol"), std::string::npos) << syntax.status();

  auto bad_enum = ParseServerConfig("tenants { name: \"a\" role: OWNER }", "c");
  EXPECT_NE(bad_enum.status().message().find("c:1:"), std::string::npos) << bad_enum.status();

  struct Case {
    std::string text;
    std::string words;
  };
  const std::string digest = ApiKeyDigest("k");
  const std::vector<Case> cases = {
      {"tenants { name: \"Acme\" role: TENANT api_key_sha256: \"" + digest + "\" namespaces: \"a\" }", "name must be"},
      {"tenants { name: \"a\" api_key_sha256: \"" + digest + "\" namespaces: \"a\" }", "role is missing"},
      {"tenants { name: \"a\" role: TENANT namespaces: \"a\" }", "no api_key_sha256"},
      {"tenants { name: \"a\" role: TENANT api_key_sha256: \"secret\" namespaces: \"a\" }", "64 lower-case hex"},
      {"tenants { name: \"a\" role: TENANT api_key_sha256: \"" + digest + "\" }", "a TENANT needs namespaces"},
      {"tenants { name: \"a\" role: TENANT api_key_sha256: \"" + digest + "\" namespaces: \"x\" }\n"
       "tenants { name: \"b\" role: TENANT api_key_sha256: \"" + ApiKeyDigest("j") + "\" namespaces: \"x\" }",
       "tenants[1] (\"b\"): namespace \"x\" belongs to two tenants"},
      {"tenants { name: \"a\" role: ADMIN api_key_sha256: \"" + digest + "\" }\n"
       "tenants { name: \"a\" role: ADMIN api_key_sha256: \"" + ApiKeyDigest("j") + "\" }",
       "the name is used twice"},
      {"tenants { name: \"a\" role: ADMIN api_key_sha256: \"" + digest + "\" }\n"
       "tenants { name: \"b\" role: ADMIN api_key_sha256: \"" + digest + "\" }",
       "an api_key_sha256 is used twice"},
      {"tenants { name: \"a\" role: ADMIN api_key_sha256: \"" + digest + "\" quotas { max_variants: -1 } }",
       "quotas must not be negative"},
  };
  for (const Case& test : cases) {
    auto parsed = ParseServerConfig(test.text, "c");
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << test.text;
    EXPECT_NE(parsed.status().message().find(test.words), std::string::npos) << parsed.status();
  }
  EXPECT_TRUE(ParseServerConfig(Config("a-key", "o-key"), "c").ok());
  EXPECT_EQ(LoadServerConfig("/nonexistent/config").status().code(), absl::StatusCode::kNotFound);
}

TEST(AuthenticatorTest, KeysAuthenticateByTheirDigestAndNothingElseDoes) {
  EXPECT_EQ(ApiKeyDigest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto config = ParseServerConfig(Config("acme-key", "ops-key"), "c");
  ASSERT_TRUE(config.ok());
  Authenticator authenticator(*config);
  EXPECT_FALSE(authenticator.open());

  auto acme = authenticator.Authenticate("Bearer acme-key");
  ASSERT_TRUE(acme.ok()) << acme.status();
  EXPECT_EQ(acme->tenant, "acme");
  EXPECT_FALSE(acme->admin);
  EXPECT_EQ(acme->namespaces, (std::vector<std::string>{"acme", "acme-lab"}));
  auto rotated = authenticator.Authenticate("Bearer acme-key-next");
  ASSERT_TRUE(rotated.ok());
  EXPECT_EQ(rotated->tenant, "acme");
  auto ops = authenticator.Authenticate("Bearer ops-key");
  ASSERT_TRUE(ops.ok());
  EXPECT_TRUE(ops->admin);
  EXPECT_EQ(ops->quotas.max_concurrent_requests(), 0) << "no quotas: unlimited";

  for (const char* refused : {"", "acme-key", "bearer acme-key", "Bearer ", "Bearer acme-keyx", "Bearer acme-ke",
                              "Basic YWNtZTprZXk=", "Bearer ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}) {
    auto status = authenticator.Authenticate(refused).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << refused;
    EXPECT_NE(status.message().find("authorization: Bearer <key>"), std::string::npos);
  }
  // A digest is not a key: sending the stored digest itself does not authenticate.
  EXPECT_FALSE(authenticator.Authenticate("Bearer " + ApiKeyDigest("acme-key")).ok());
}

TEST(AuthenticatorTest, WithoutTenantsEveryoneIsAnAnonymousAdmin) {
  auto authenticator = Authenticator::Create("");
  ASSERT_TRUE(authenticator.ok());
  EXPECT_TRUE((*authenticator)->open());
  auto anyone = (*authenticator)->Authenticate("");
  ASSERT_TRUE(anyone.ok());
  EXPECT_TRUE(anyone->admin);
  EXPECT_EQ(anyone->tenant, "");
  EXPECT_EQ((*authenticator)->Reload().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(AuthenticatorTest, ReloadSwapsTheTenantsAndAnInvalidFileKeepsTheOldOnes) {
  const std::string path = deltaserve::testing::MakeTempDir("auth-config") + "/config.textproto";
  ASSERT_TRUE(common::WriteFileAtomically(path, Config("first-key", "ops-key")).ok());
  auto authenticator = Authenticator::Create(path);
  ASSERT_TRUE(authenticator.ok()) << authenticator.status();
  EXPECT_TRUE((*authenticator)->Authenticate("Bearer first-key").ok());

  ASSERT_TRUE(common::WriteFileAtomically(path, Config("second-key", "ops-key")).ok());
  ASSERT_TRUE((*authenticator)->Reload().ok());
  EXPECT_TRUE((*authenticator)->Authenticate("Bearer second-key").ok()) << "the new key works";
  EXPECT_FALSE((*authenticator)->Authenticate("Bearer first-key").ok()) << "the removed key stops working";

  ASSERT_TRUE(common::WriteFileAtomically(path, "tenants { name: \"broken\"\n").ok());
  absl::Status reloaded = (*authenticator)->Reload();
  EXPECT_EQ(reloaded.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(reloaded.message().find(path + ":2:"), std::string::npos) << reloaded;
  EXPECT_TRUE((*authenticator)->Authenticate("Bearer second-key").ok()) << "the old configuration stays";

  EXPECT_FALSE(Authenticator::Create(path).ok()) << "an invalid file cannot start a server";
}

}  // namespace
}  // namespace deltaserve::auth
