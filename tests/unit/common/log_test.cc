// Log lines cannot be forged by what clients choose: a newline or a " key=value" inside a field
// or the message stays inside its line and its field, in the text format as in JSON.
#include "server/common/log.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace deltaserve::common {
namespace {

constexpr const char* kTime = "2026-12-07T00:00:00.000Z";

TEST(LogTest, TextLinesKeepClientTextInsideItsField) {
  const std::string forged = "abc\n2026-12-07T00:00:01.000Z deltaserve: request finished request_id=admin status=OK";
  const std::string line = FormatLogLine(LogFormat::kText, kTime, "request finished",
                                         {{"request_id", forged}, {"variant", "acme/bot"}, {"agent", "x status=OK"}});
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  EXPECT_EQ(line,
            "2026-12-07T00:00:00.000Z deltaserve: request finished request_id=\"abc\\n2026-12-07T00:00:01.000Z "
            "deltaserve: request finished request_id=admin status=OK\" variant=acme/bot agent=\"x status=OK\"");
  EXPECT_EQ(FormatLogLine(LogFormat::kText, kTime, "m", {{"empty", ""}, {"tab", "a\tb"}, {"bell", "\x07"}}),
            "2026-12-07T00:00:00.000Z deltaserve: m empty=\"\" tab=\"a\\tb\" bell=\"\\u0007\"");
}

TEST(LogTest, TextMessagesEscapeControlCharacters) {
  EXPECT_EQ(FormatLogLine(LogFormat::kText, kTime, "loaded /tmp/a\nfake line\r\x1b[2J", {}),
            "2026-12-07T00:00:00.000Z deltaserve: loaded /tmp/a\\nfake line\\r\\x1b[2J");
}

TEST(LogTest, JsonLinesParseBackToWhatWasLogged) {
  const std::string value = "a\"b\\c\n\x01 d=e";
  const std::string line = FormatLogLine(LogFormat::kJson, kTime, "msg\n", {{"request_id", value}});
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const nlohmann::json parsed = nlohmann::json::parse(line);
  EXPECT_EQ(parsed["request_id"], value);
  EXPECT_EQ(parsed["message"], "msg\n");
  EXPECT_EQ(parsed["time"], kTime);
}

}  // namespace
}  // namespace deltaserve::common
