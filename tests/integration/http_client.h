// A minimal HTTP/1.1 client for integration tests, to loopback only: one request per
// connection ("Connection: close"), chunked bodies decoded, and the "data:" events of a
// server-sent-events body split out.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace deltaserve::testing {

struct HttpReply {
  int status = 0;  // 0: no answer
  std::string head;
  std::string body;
  // Header: a header's value (case-insensitive name), "" when absent.
  std::string Header(const std::string& name) const;
  nlohmann::json Json() const { return nlohmann::json::parse(body, nullptr, false); }
};

// HttpCall sends one request to 127.0.0.1:port; `headers` are "Name: value" lines.
HttpReply HttpCall(int port, const std::string& method, const std::string& path, const std::string& body = "",
                   const std::vector<std::string>& headers = {}, int timeout_ms = 60000);

// SseData: the payloads of a server-sent-events body's "data: " lines, in order.
std::vector<std::string> SseData(const std::string& body);

}  // namespace deltaserve::testing
