// HttpRequestParser: reads one HTTP/1.x request from bytes as they arrive (RFC 9112), for the
// HTTP front's event loop. Feed it what the socket gave; it consumes up to the end of one request
// and leaves the rest (a pipelined next request) to the caller.
//   - Request line: a method token, an origin-form ("/path?query") or absolute-form target, and
//     HTTP/1.0 or HTTP/1.1 (other versions: 505). The path is percent-decoded; a %00 or a bad
//     escape is refused.
//   - Headers: at most limits.max_header_bytes for the request line and headers together (431),
//     at most limits.max_headers of them; names are tokens, values hold no control characters
//     other than tab, and obsolete line folding is refused (400).
//   - Body: Content-Length (one value; digits only) or Transfer-Encoding: chunked (decoded; a
//     request with both is refused, as is any other transfer coding: 501); larger than
//     limits.max_body_bytes: 413, known from Content-Length before any body byte is read.
// Every refusal sets error_status() and a message that says what was wrong. Lines may end in
// CRLF or a bare LF.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"
#include "server/api/http_server.h"

namespace deltaserve::api {

struct HttpParseLimits {
  size_t max_header_bytes = 16 << 10;
  size_t max_headers = 100;
  int64_t max_body_bytes = 4 << 20;
};

class HttpRequestParser {
 public:
  enum class State { kHead, kBody, kDone, kError };

  explicit HttpRequestParser(HttpParseLimits limits) : limits_(limits) {}

  // Feed consumes bytes of `data` up to the end of the request (or the error) and returns how
  // many it consumed.
  size_t Feed(std::string_view data);

  State state() const { return state_; }
  // Whether any byte of this request has been seen.
  bool started() const { return started_; }
  // After the head: the client sent "Expect: 100-continue" and waits for it before the body.
  bool expects_continue() const { return expects_continue_; }
  // After the head: HTTP/1.0 (no chunked responses) and whether the connection may stay open
  // after the response (HTTP/1.1 unless "Connection: close"; HTTP/1.0 with "keep-alive").
  bool http10() const { return http10_; }
  bool keep_alive() const { return keep_alive_; }
  int error_status() const { return error_status_; }
  const std::string& error_message() const { return error_message_; }
  // The request, once state() is kDone.
  HttpRequest& request() { return request_; }

 private:
  enum class BodyMode { kNone, kLength, kChunkSize, kChunkData, kChunkDataEnd, kTrailers };

  size_t FeedHead(absl::string_view data);
  size_t FeedBody(absl::string_view data);
  void ParseHead(absl::string_view head);
  bool ParseRequestLine(absl::string_view line);
  bool ParseHeaderLine(absl::string_view line);
  bool DecideBody();
  void Fail(int status, std::string message);
  // TakeLine: a complete line from data at *used (with what line_ holds from earlier bytes);
  // false when it needs more bytes, or (failing with `too_long`) when it outgrows `limit`.
  bool TakeLine(absl::string_view data, size_t* used, std::string* line, size_t limit, const char* too_long);

  HttpParseLimits limits_;
  State state_ = State::kHead;
  BodyMode body_mode_ = BodyMode::kNone;
  bool started_ = false;
  bool expects_continue_ = false;
  bool http10_ = false;
  bool keep_alive_ = true;
  int error_status_ = 0;
  std::string error_message_;
  std::string head_;        // bytes of the head so far
  std::string line_;        // a chunk-size or trailer line so far
  int64_t remaining_ = 0;   // body bytes still expected (Content-Length or the current chunk)
  size_t trailer_bytes_ = 0;
  HttpRequest request_;
};

}  // namespace deltaserve::api
