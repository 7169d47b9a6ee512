#include "server/api/http_request_parser.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace deltaserve::api {
namespace {

bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         absl::string_view("!#$%&'*+-.^_`|~").find(c) != absl::string_view::npos;
}

bool IsToken(absl::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), IsTokenChar);
}

absl::string_view TrimWhitespace(absl::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Quoted: a client's text for an error message, with anything unprintable escaped and cut short.
std::string Quoted(absl::string_view text) {
  std::string out = "\"";
  for (char c : text.substr(0, 64)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte >= 0x7f || c == '"' || c == '\\') {
      absl::StrAppend(&out, "\\x", absl::Hex(byte, absl::kZeroPad2));
    } else {
      out += c;
    }
  }
  if (text.size() > 64) out += "...";
  return out + "\"";
}

}  // namespace

void HttpRequestParser::Fail(int status, std::string message) {
  state_ = State::kError;
  error_status_ = status;
  error_message_ = std::move(message);
  keep_alive_ = false;
}

size_t HttpRequestParser::Feed(std::string_view bytes) {
  absl::string_view data(bytes.data(), bytes.size());
  size_t used = 0;
  if (!data.empty()) started_ = true;
  if (state_ == State::kHead) used += FeedHead(data);
  if (state_ == State::kBody) used += FeedBody(data.substr(used));
  return used;
}

size_t HttpRequestParser::FeedHead(absl::string_view data) {
  // Blank lines before a request line are allowed (RFC 9112 section 2.2).
  size_t skipped = 0;
  if (head_.empty()) {
    while (skipped < data.size() && (data[skipped] == '\r' || data[skipped] == '\n')) ++skipped;
    data.remove_prefix(skipped);
    if (data.empty()) return skipped;
  }
  const size_t before = head_.size();
  head_.append(data.data(), std::min(data.size(), limits_.max_header_bytes + 4 - std::min(before, limits_.max_header_bytes + 4)));
  // The head ends at the first empty line; search from a little before the new bytes.
  const size_t from = before >= 3 ? before - 3 : 0;
  size_t end = std::string::npos;
  size_t terminator = 0;
  for (size_t i = from; i < head_.size(); ++i) {
    if (head_[i] != '\n') continue;
    if (i + 1 < head_.size() && head_[i + 1] == '\n') {
      end = i + 1;
      terminator = 1;
      break;
    }
    if (i + 2 < head_.size() && head_[i + 1] == '\r' && head_[i + 2] == '\n') {
      end = i + 1;
      terminator = 2;
      break;
    }
  }
  if (end == std::string::npos) {
    if (head_.size() > limits_.max_header_bytes) {
      Fail(431, absl::StrCat("the request line and headers are larger than ", limits_.max_header_bytes, " bytes"));
      return skipped + data.size();
    }
    return skipped + data.size();
  }
  if (end > limits_.max_header_bytes) {
    Fail(431, absl::StrCat("the request line and headers are larger than ", limits_.max_header_bytes, " bytes"));
    return skipped + data.size();
  }
  const size_t head_size = end + terminator;  // through the empty line
  const size_t used_here = head_size - before;
  head_.resize(end);
  ParseHead(head_);
  head_.clear();
  return skipped + used_here;
}

void HttpRequestParser::ParseHead(absl::string_view head) {
  std::vector<absl::string_view> lines = absl::StrSplit(head, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  for (absl::string_view& line : lines) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  }
  if (lines.empty() || !ParseRequestLine(lines[0])) {
    if (state_ != State::kError) Fail(400, "the request line is not METHOD TARGET HTTP/1.1");
    return;
  }
  if (lines.size() - 1 > limits_.max_headers) {
    Fail(431, absl::StrCat("the request has more than ", limits_.max_headers, " headers"));
    return;
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    if (!ParseHeaderLine(lines[i])) return;
  }
  if (!DecideBody()) return;
  state_ = body_mode_ == BodyMode::kNone ? State::kDone : State::kBody;
}

bool HttpRequestParser::ParseRequestLine(absl::string_view line) {
  std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
  if (parts.size() != 3 || !IsToken(parts[0]) || parts[1].empty()) return false;
  absl::string_view version = parts[2];
  if (!absl::StartsWith(version, "HTTP/") || version.size() != 8 || !absl::ascii_isdigit(version[5]) ||
      version[6] != '.' || !absl::ascii_isdigit(version[7])) {
    return false;
  }
  if (version[5] != '1') {
    Fail(505, absl::StrCat("HTTP version ", Quoted(version.substr(5)), " is not supported: send HTTP/1.1"));
    return false;
  }
  http10_ = version[7] == '0';
  keep_alive_ = !http10_;
  request_.method = std::string(parts[0]);
  absl::string_view target = parts[1];
  if (absl::StartsWithIgnoreCase(target, "http://") || absl::StartsWithIgnoreCase(target, "https://")) {
    target.remove_prefix(target.find("//") + 2);
    const size_t slash = target.find('/');
    target = slash == absl::string_view::npos ? absl::string_view("/") : target.substr(slash);
  }
  if (target.front() != '/') {
    Fail(400, absl::StrCat("the request target ", Quoted(target), " is not a path starting with /"));
    return false;
  }
  const size_t question = target.find('?');
  absl::string_view path = target.substr(0, question);
  if (question != absl::string_view::npos) request_.query = std::string(target.substr(question + 1));
  const size_t hash = request_.query.find('#');
  if (hash != std::string::npos) request_.query.resize(hash);
  for (size_t i = 0; i < path.size(); ++i) {
    const char c = path[i];
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      Fail(400, absl::StrCat("the request target ", Quoted(target), " holds a control character"));
      return false;
    }
    if (c == '#') break;
    if (c != '%') {
      request_.path += c;
      continue;
    }
    const int high = i + 2 < path.size() ? HexValue(path[i + 1]) : -1;
    const int low = i + 2 < path.size() ? HexValue(path[i + 2]) : -1;
    if (high < 0 || low < 0 || (high == 0 && low == 0)) {
      Fail(400, absl::StrCat("the request path ", Quoted(path), " has a bad percent-escape"));
      return false;
    }
    request_.path += static_cast<char>(high * 16 + low);
    i += 2;
  }
  return true;
}

bool HttpRequestParser::ParseHeaderLine(absl::string_view line) {
  if (!line.empty() && (line.front() == ' ' || line.front() == '\t')) {
    Fail(400, "a header line starts with whitespace (obsolete line folding is not accepted)");
    return false;
  }
  const size_t colon = line.find(':');
  if (colon == absl::string_view::npos || !IsToken(line.substr(0, colon))) {
    Fail(400, absl::StrCat("the header line ", Quoted(line), " is not NAME: VALUE"));
    return false;
  }
  absl::string_view name = line.substr(0, colon);
  absl::string_view value = TrimWhitespace(line.substr(colon + 1));
  for (char c : value) {
    const auto byte = static_cast<unsigned char>(c);
    if ((byte < 0x20 && c != '\t') || byte == 0x7f) {
      Fail(400, absl::StrCat("the value of header ", std::string(name), " holds a control character"));
      return false;
    }
  }
  request_.headers.emplace_back(std::string(name), std::string(value));
  return true;
}

bool HttpRequestParser::DecideBody() {
  bool has_length = false;
  int64_t length = 0;
  bool chunked = false;
  for (const auto& [name, value] : request_.headers) {
    if (absl::EqualsIgnoreCase(name, "content-length")) {
      int64_t parsed = 0;
      const bool digits = !value.empty() && value.size() <= 18 &&
                          std::all_of(value.begin(), value.end(), [](char c) { return absl::ascii_isdigit(c); });
      if (!digits || !absl::SimpleAtoi(value, &parsed) || (has_length && parsed != length)) {
        Fail(400, absl::StrCat("Content-Length ", Quoted(value), " is not one number of bytes"));
        return false;
      }
      has_length = true;
      length = parsed;
    } else if (absl::EqualsIgnoreCase(name, "transfer-encoding")) {
      if (!absl::EqualsIgnoreCase(value, "chunked") || chunked) {
        Fail(501, absl::StrCat("Transfer-Encoding ", Quoted(value), " is not supported: send chunked or Content-Length"));
        return false;
      }
      chunked = true;
    } else if (absl::EqualsIgnoreCase(name, "connection")) {
      for (absl::string_view option : absl::StrSplit(value, ',')) {
        option = TrimWhitespace(option);
        if (absl::EqualsIgnoreCase(option, "close")) keep_alive_ = false;
        if (absl::EqualsIgnoreCase(option, "keep-alive") && http10_) keep_alive_ = true;
      }
    } else if (absl::EqualsIgnoreCase(name, "expect")) {
      if (!absl::EqualsIgnoreCase(value, "100-continue")) {
        Fail(417, absl::StrCat("Expect ", Quoted(value), " is not supported"));
        return false;
      }
      expects_continue_ = !http10_;
    }
  }
  if (has_length && chunked) {
    Fail(400, "the request has both Content-Length and Transfer-Encoding");
    return false;
  }
  if (chunked && http10_) {
    Fail(400, "HTTP/1.0 requests cannot use Transfer-Encoding: chunked");
    return false;
  }
  if (has_length && length > limits_.max_body_bytes) {
    Fail(413, absl::StrCat("the request body is larger than ", limits_.max_body_bytes, " bytes"));
    return false;
  }
  if (chunked) {
    body_mode_ = BodyMode::kChunkSize;
  } else if (has_length && length > 0) {
    body_mode_ = BodyMode::kLength;
    remaining_ = length;
    request_.body.reserve(static_cast<size_t>(length));
  } else {
    expects_continue_ = false;  // nothing to wait for
  }
  return true;
}

bool HttpRequestParser::TakeLine(absl::string_view data, size_t* used, std::string* line, size_t limit,
                                 const char* too_long) {
  const size_t newline = data.find('\n', *used);
  const size_t end = newline == absl::string_view::npos ? data.size() : newline;
  line_.append(data.data() + *used, end - *used);
  *used = newline == absl::string_view::npos ? data.size() : newline + 1;
  if (line_.size() > limit) {
    Fail(400, too_long);
    return false;
  }
  if (newline == absl::string_view::npos) return false;
  if (!line_.empty() && line_.back() == '\r') line_.pop_back();
  *line = std::move(line_);
  line_.clear();
  return true;
}

size_t HttpRequestParser::FeedBody(absl::string_view data) {
  size_t used = 0;
  while (state_ == State::kBody && used < data.size()) {
    switch (body_mode_) {
      case BodyMode::kLength:
      case BodyMode::kChunkData: {
        const size_t take = static_cast<size_t>(std::min<int64_t>(remaining_, static_cast<int64_t>(data.size() - used)));
        request_.body.append(data.data() + used, take);
        used += take;
        remaining_ -= static_cast<int64_t>(take);
        if (remaining_ == 0) {
          if (body_mode_ == BodyMode::kLength) {
            state_ = State::kDone;
          } else {
            body_mode_ = BodyMode::kChunkDataEnd;
          }
        }
        break;
      }
      case BodyMode::kChunkSize: {
        std::string line;
        if (!TakeLine(data, &used, &line, 1024, "a chunk-size line of the chunked body is too long")) break;
        absl::string_view size_text = TrimWhitespace(absl::string_view(line).substr(0, line.find(';')));
        int64_t size = 0;
        bool valid = !size_text.empty() && size_text.size() <= 15;
        for (char c : size_text) {
          const int digit = HexValue(c);
          if (digit < 0) valid = false;
          size = size * 16 + std::max(digit, 0);
        }
        if (!valid) {
          Fail(400, absl::StrCat("the chunk size ", Quoted(size_text), " is not a hexadecimal number"));
          break;
        }
        if (static_cast<int64_t>(request_.body.size()) + size > limits_.max_body_bytes) {
          Fail(413, absl::StrCat("the request body is larger than ", limits_.max_body_bytes, " bytes"));
          break;
        }
        if (size == 0) {
          body_mode_ = BodyMode::kTrailers;
        } else {
          remaining_ = size;
          body_mode_ = BodyMode::kChunkData;
        }
        break;
      }
      case BodyMode::kChunkDataEnd: {
        std::string line;
        if (!TakeLine(data, &used, &line, 2, "a chunk of the chunked body is longer than its size says")) break;
        if (!line.empty()) {
          Fail(400, "a chunk of the chunked body is longer than its size says");
          break;
        }
        body_mode_ = BodyMode::kChunkSize;
        break;
      }
      case BodyMode::kTrailers: {
        std::string line;
        if (!TakeLine(data, &used, &line, limits_.max_header_bytes, "a trailer line of the chunked body is too long")) break;
        trailer_bytes_ += line.size() + 2;
        if (trailer_bytes_ > limits_.max_header_bytes) {
          Fail(431, absl::StrCat("the chunked body's trailers are larger than ", limits_.max_header_bytes, " bytes"));
          break;
        }
        if (line.empty()) state_ = State::kDone;  // trailers are read and dropped
        break;
      }
      case BodyMode::kNone:
        state_ = State::kDone;
        break;
    }
  }
  return used;
}

}  // namespace deltaserve::api
