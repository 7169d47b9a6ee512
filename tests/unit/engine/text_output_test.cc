// TextOutput: stop strings spanning tokens are cut and never released, text that could start a
// stop string is held back only as long as needed, and multi-byte characters stay whole.
#include <gtest/gtest.h>

#include "server/engine/text_output.h"

namespace deltaserve::engine {
namespace {

TEST(TextOutputTest, StopStringAcrossTokens) {
  TextOutput output({"STOP"});
  EXPECT_EQ(output.Append("hello S"), "hello ");  // "S" might start "STOP"
  EXPECT_EQ(output.Append("T"), "");
  EXPECT_EQ(output.Append("Ox"), "STOx");  // "STOx" can no longer become "STOP"
  EXPECT_FALSE(output.Stopped());
  EXPECT_EQ(output.Append("ST"), "");
  EXPECT_EQ(output.Flush(), "ST");
}

TEST(TextOutputTest, StopsAndDropsTheStopString) {
  TextOutput output({"\n\n", "END"});
  EXPECT_EQ(output.Append("one E"), "one ");
  EXPECT_EQ(output.Append("ND and more"), "");
  EXPECT_TRUE(output.Stopped());
  EXPECT_EQ(output.Flush(), "");
  EXPECT_EQ(output.Append("ignored"), "");
}

TEST(TextOutputTest, EarliestStopWins) {
  TextOutput output({"b", "a"});
  EXPECT_EQ(output.Append("xxab"), "xx");
  EXPECT_TRUE(output.Stopped());
}

TEST(TextOutputTest, MultiByteCharactersAndStops) {
  TextOutput output({"好!"});
  EXPECT_EQ(output.Append("你\xE5"), "你");
  EXPECT_EQ(output.Append("\xA5\xBD"), "");  // "好" may start the stop string
  EXPECT_EQ(output.Append("?"), "好?");
  EXPECT_EQ(output.Append("好"), "");
  EXPECT_EQ(output.Append("!"), "");
  EXPECT_TRUE(output.Stopped());
}

TEST(TextOutputTest, NoStopStringsReleasesEverything) {
  TextOutput output;
  EXPECT_EQ(output.Append("abc"), "abc");
  EXPECT_EQ(output.Append("\xF0\x9F"), "");
  EXPECT_EQ(output.Append("\x99\x82"), "🙂");
}

}  // namespace
}  // namespace deltaserve::engine
