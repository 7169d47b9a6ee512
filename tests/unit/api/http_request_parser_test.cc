#include "server/api/http_request_parser.h"

#include <gtest/gtest.h>

#include <string>

namespace deltaserve::api {
namespace {

// FeedAll gives the parser `text` one piece of `step` bytes at a time; returns bytes consumed.
size_t FeedAll(HttpRequestParser& parser, const std::string& text, size_t step) {
  size_t used = 0;
  while (used < text.size() && (parser.state() == HttpRequestParser::State::kHead ||
                                parser.state() == HttpRequestParser::State::kBody)) {
    const size_t piece = std::min(step, text.size() - used);
    const size_t took = parser.Feed(std::string_view(text).substr(used, piece));
    used += took;
    if (took < piece) break;
  }
  return used;
}

TEST(HttpRequestParserTest, ReadsAGetWithQueryAndDecodesThePath) {
  HttpRequestParser parser({});
  const std::string text = "GET /v1/mo%64els?x=1%20 HTTP/1.1\r\nHost: a\r\nX-Thing:  two words \r\n\r\n";
  EXPECT_EQ(FeedAll(parser, text, 1), text.size());
  ASSERT_EQ(parser.state(), HttpRequestParser::State::kDone);
  EXPECT_EQ(parser.request().method, "GET");
  EXPECT_EQ(parser.request().path, "/v1/models");
  EXPECT_EQ(parser.request().query, "x=1%20");
  EXPECT_EQ(parser.request().Header("x-thing"), "two words");
  EXPECT_TRUE(parser.keep_alive());
  EXPECT_FALSE(parser.http10());
}

TEST(HttpRequestParserTest, ReadsAContentLengthBodyAndLeavesThePipelinedRequest) {
  const std::string first = "POST /a HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world";
  const std::string text = first + "GET /b HTTP/1.1\r\n\r\n";
  for (size_t step : {size_t{1}, size_t{7}, text.size()}) {
    HttpRequestParser parser({});
    EXPECT_EQ(FeedAll(parser, text, step), first.size()) << step;
    ASSERT_EQ(parser.state(), HttpRequestParser::State::kDone);
    EXPECT_EQ(parser.request().body, "hello world");
  }
}

TEST(HttpRequestParserTest, DecodesAChunkedBodyWithExtensionsAndTrailers) {
  const std::string first =
      "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;name=x\r\nhello\r\n1\n \r\n5\r\nworld\r\n0\r\nX-Sum: 1\r\n\r\n";
  const std::string text = first + "GET /b HTTP/1.1\r\n\r\n";
  for (size_t step : {size_t{1}, size_t{3}, text.size()}) {
    HttpRequestParser parser({});
    EXPECT_EQ(FeedAll(parser, text, step), first.size()) << step;
    ASSERT_EQ(parser.state(), HttpRequestParser::State::kDone) << parser.error_message();
    EXPECT_EQ(parser.request().body, "hello world");
  }
}

TEST(HttpRequestParserTest, KeepAliveFollowsTheVersionAndConnectionHeader) {
  auto keep_alive = [](const std::string& text) {
    HttpRequestParser parser({});
    parser.Feed(text);
    EXPECT_EQ(parser.state(), HttpRequestParser::State::kDone) << text;
    return parser.keep_alive();
  };
  EXPECT_TRUE(keep_alive("GET / HTTP/1.1\r\n\r\n"));
  EXPECT_FALSE(keep_alive("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n"));
  EXPECT_FALSE(keep_alive("GET / HTTP/1.0\r\n\r\n"));
  EXPECT_TRUE(keep_alive("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
  EXPECT_TRUE(keep_alive("\r\nGET / HTTP/1.1\n\n"));  // a leading blank line and bare LFs
}

TEST(HttpRequestParserTest, ExpectContinueIsReportedOnlyWhenABodyFollows) {
  HttpRequestParser with_body({});
  with_body.Feed("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
  EXPECT_EQ(with_body.state(), HttpRequestParser::State::kBody);
  EXPECT_TRUE(with_body.expects_continue());
  HttpRequestParser empty({});
  empty.Feed("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(empty.state(), HttpRequestParser::State::kDone);
  EXPECT_FALSE(empty.expects_continue());
}

struct Refusal {
  std::string text;
  int status;
  std::string message_part;
};

TEST(HttpRequestParserTest, RefusesMalformedAndOversizedRequestsSayingWhy) {
  HttpParseLimits limits;
  limits.max_header_bytes = 256;
  limits.max_body_bytes = 10;
  const std::vector<Refusal> refusals = {
      {"GET /\r\n\r\n", 400, "request line"},
      {"GET / HTTP/2.0\r\n\r\n", 505, "HTTP/1.1"},
      {"GET nopath HTTP/1.1\r\n\r\n", 400, "starting with /"},
      {"GET /a%zz HTTP/1.1\r\n\r\n", 400, "percent-escape"},
      {"GET /a%00 HTTP/1.1\r\n\r\n", 400, "percent-escape"},
      {"GET / HTTP/1.1\r\nX-Long: " + std::string(300, 'a') + "\r\n\r\n", 431, "256 bytes"},
      {"GET / HTTP/1.1\r\nX-Never-Ends: " + std::string(300, 'a'), 431, "256 bytes"},
      {"GET / HTTP/1.1\r\nbad name: 1\r\n\r\n", 400, "NAME: VALUE"},
      {"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400, "folding"},
      {"GET / HTTP/1.1\r\nX-A: a\x01z\r\n\r\n", 400, "control character"},
      {"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400, "Content-Length"},
      {"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", 400, "Content-Length"},
      {"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "both"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "chunked"},
      {"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413, "10 bytes"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n", 413, "10 bytes"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400, "hexadecimal"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n", 400, "longer than its size"},
      {"POST / HTTP/1.1\r\nExpect: something\r\n\r\n", 417, "Expect"},
  };
  for (const Refusal& refusal : refusals) {
    HttpRequestParser parser(limits);
    FeedAll(parser, refusal.text, 5);
    ASSERT_EQ(parser.state(), HttpRequestParser::State::kError) << refusal.text;
    EXPECT_EQ(parser.error_status(), refusal.status) << refusal.text;
    EXPECT_NE(parser.error_message().find(refusal.message_part), std::string::npos)
        << refusal.text << " -> " << parser.error_message();
    EXPECT_FALSE(parser.keep_alive());
  }
}

}  // namespace
}  // namespace deltaserve::api
