// The configuration file's `server { }` settings reach the flags of the same names through the
// flags' own parsers, and a flag given on the command line wins. The flags here stand in for
// main.cc's (this binary does not link it); the server's own start-up check that every flag has
// a field is exercised by the integration tests, which start the real binary.
#include "server/auth/settings_flags.h"

#include <gtest/gtest.h>

#include "absl/flags/flag.h"
#include "server/auth/server_config.h"

ABSL_FLAG(int32_t, port, 50051, "test stand-in");
ABSL_FLAG(std::string, host, "127.0.0.1", "test stand-in");
ABSL_FLAG(std::vector<std::string>, adapter_dir, {}, "test stand-in");
ABSL_FLAG(bool, allow_unauthenticated, false, "test stand-in");
ABSL_FLAG(double, shutdown_grace_seconds, 30, "test stand-in");
ABSL_FLAG(int64_t, kv_cache_bytes, 1, "test stand-in");
// Narrower than its field (int64), so that the flag's parser can refuse a value the schema takes.
ABSL_FLAG(int32_t, max_batch_tokens, 1, "test stand-in");
ABSL_FLAG(int32_t, not_a_setting, 0, "a flag with no ServerSettings field");

namespace deltaserve::auth {
namespace {

v1::ServerSettings Settings(const std::string& text) {
  auto config = ParseServerConfig("server { " + text + " }", "test.textproto");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? config->server() : v1::ServerSettings();
}

TEST(SettingsFlagsTest, FieldsSetTheirFlagsUnlessTheCommandLineGaveThem) {
  const v1::ServerSettings settings =
      Settings("port: 7000 host: \"0.0.0.0\" adapter_dir: \"/a\" adapter_dir: \"/b\" allow_unauthenticated: true "
               "shutdown_grace_seconds: 2.5 kv_cache_bytes: 0");
  ASSERT_TRUE(ApplySettingsToFlags(settings, "test.textproto", {"deltaserve", "--host=::1", "-noallow_unauthenticated",
                                                                 "--", "--port=1"})
                  .ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_port), 7000) << "after a bare --, arguments are not flags";
  EXPECT_EQ(absl::GetFlag(FLAGS_host), "127.0.0.1") << "given on the command line: the file does not override it";
  EXPECT_FALSE(absl::GetFlag(FLAGS_allow_unauthenticated)) << "--noNAME counts as given";
  EXPECT_EQ(absl::GetFlag(FLAGS_adapter_dir), (std::vector<std::string>{"/a", "/b"}));
  EXPECT_DOUBLE_EQ(absl::GetFlag(FLAGS_shutdown_grace_seconds), 2.5);
  EXPECT_EQ(absl::GetFlag(FLAGS_kv_cache_bytes), 0) << "an explicit 0 is a setting (optional fields)";
}

TEST(SettingsFlagsTest, ValuesTheFlagRefusesAndFieldsWithoutAFlagAreErrors) {
  absl::Status status = ApplySettingsToFlags(Settings("max_batch_tokens: 123456789012"), "c.textproto", {});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("c.textproto: server.max_batch_tokens: "), std::string::npos) << status.message();
  EXPECT_EQ(absl::GetFlag(FLAGS_max_batch_tokens), 1) << "a refused value leaves the flag as it was";
  EXPECT_FALSE(ParseServerConfig("server { port: 123456789012 }", "c.textproto").ok())
      << "the schema itself refuses an int32 out of range";
  status = ApplySettingsToFlags(Settings("data_dir: \"/x\""), "c.textproto", {});
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(status.message().find("c.textproto: server.data_dir has no flag"), std::string::npos) << status.message();
  EXPECT_NE(ParseServerConfig("server { no_such_setting: 1 }", "c.textproto").status().message().find("c.textproto:1:"),
            std::string::npos)
      << "unknown settings are refused with line and column";
}

TEST(SettingsFlagsTest, FlagsWithoutAFieldAreListed) {
  EXPECT_EQ(FlagsWithoutSettings("settings_flags_test.cc", {}), std::vector<std::string>{"not_a_setting"});
  EXPECT_TRUE(FlagsWithoutSettings("settings_flags_test.cc", {"not_a_setting"}).empty());
  EXPECT_TRUE(FlagsWithoutSettings("no_such_file.cc", {}).empty());
}

}  // namespace
}  // namespace deltaserve::auth
