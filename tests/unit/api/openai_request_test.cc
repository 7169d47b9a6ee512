// OpenAI request parsing, the status mapping and HTTP routing, without sockets.
#include "server/api/openai_request.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "server/api/http_server.h"
#include "server/api/openai_api.h"

namespace deltaserve::api {
namespace {

TEST(OpenAiRequestTest, CompletionDefaultsFollowOpenAi) {
  absl::StatusOr<OpenAiRequest> request = ParseCompletionRequest(R"({"prompt": "hi", "model": "acme/bot"})");
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->model, "acme/bot");
  EXPECT_EQ(request->prompt, "hi");
  EXPECT_FLOAT_EQ(request->sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(request->sampling.top_p, 1.0f);
  EXPECT_FALSE(request->sampling.seed.has_value());
  EXPECT_FALSE(request->sampling.logprobs);
  EXPECT_FALSE(request->stream);
}

TEST(OpenAiRequestTest, CompletionFields) {
  absl::StatusOr<OpenAiRequest> request = ParseCompletionRequest(
      R"({"prompt": [[1, 2, 3]], "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": -1, "seed": 9,
          "stop": "\n", "stream": true, "stream_options": {"include_usage": true}, "logprobs": 0, "n": 1,
          "user": "ignored", "stop_token_ids": [5]})");
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(request->sampling.max_tokens, 7);
  EXPECT_EQ(request->sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(request->sampling.top_p, 0.5f);
  EXPECT_EQ(request->sampling.top_k, 0);
  EXPECT_EQ(request->sampling.seed, 9u);
  EXPECT_EQ(request->sampling.stop, (std::vector<std::string>{"\n"}));
  EXPECT_EQ(request->sampling.stop_token_ids, (std::vector<int32_t>{5}));
  EXPECT_TRUE(request->stream && request->include_usage && request->sampling.logprobs);
  EXPECT_EQ(ParseCompletionRequest(R"({"prompt": ["one"]})")->prompt, "one");
}

TEST(OpenAiRequestTest, PenaltiesMinPAndLogitBias) {
  absl::StatusOr<OpenAiRequest> request = ParseChatRequest(
      R"({"messages": [{"role": "user", "content": "x"}], "presence_penalty": -0.5, "frequency_penalty": 1.25,
          "repetition_penalty": 1.1, "min_p": 0.05, "logit_bias": {"5": -100, "17": 2.5},
          "bad_words": [" cat", "dog"]})");
  ASSERT_TRUE(request.ok()) << request.status();
  const engine::SamplingOptions& sampling = request->sampling;
  EXPECT_FLOAT_EQ(sampling.presence_penalty, -0.5f);
  EXPECT_FLOAT_EQ(sampling.frequency_penalty, 1.25f);
  EXPECT_FLOAT_EQ(sampling.repetition_penalty, 1.1f);
  EXPECT_FLOAT_EQ(sampling.min_p, 0.05f);
  std::vector<std::pair<int32_t, float>> biases = sampling.logit_bias;
  std::sort(biases.begin(), biases.end());
  EXPECT_EQ(biases, (std::vector<std::pair<int32_t, float>>{{5, -100.0f}, {17, 2.5f}}));
  EXPECT_EQ(request->bad_words, (std::vector<std::string>{" cat", "dog"}));
  // Left out: off.
  absl::StatusOr<OpenAiRequest> plain = ParseCompletionRequest(R"({"prompt": "x", "logit_bias": {}})");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(plain->sampling.presence_penalty, 0.0f);
  EXPECT_TRUE(plain->sampling.logit_bias.empty());
}

TEST(OpenAiRequestTest, RefusalsNameTheField) {
  struct Case {
    const char* body;
    const char* expected;
  };
  for (const Case& c : std::vector<Case>{{"[1]", "JSON object"},
                                         {R"({"prompt": ["a", "b"]})", "several requests"},
                                         {R"({"prompt": ""})", "\"prompt\" is empty"},
                                         {R"({"prompt": [-1]})", "non-negative"},
                                         {R"({"prompt": "x", "best_of": 3})", "best_of"},
                                         {R"({"prompt": "x", "echo": true})", "echo"},
                                         {R"({"prompt": "x", "presence_penalty": 2.5})", "presence_penalty"},
                                         {R"({"prompt": "x", "frequency_penalty": "1"})", "frequency_penalty"},
                                         {R"({"prompt": "x", "repetition_penalty": 0})", "repetition_penalty"},
                                         {R"({"prompt": "x", "min_p": 1.5})", "min_p"},
                                         {R"({"prompt": "x", "logit_bias": {"five": 1}})", "token ids"},
                                         {R"({"prompt": "x", "logit_bias": {"5": 101}})", "between -100 and 100"},
                                         {R"({"prompt": "x", "logit_bias": [5]})", "logit_bias"},
                                         {R"({"prompt": "x", "bad_words": "cat"})", "bad_words"},
                                         {R"({"prompt": "x", "bad_words": [1]})", "bad_words"},
                                         {R"({"prompt": "x", "temperature": 3})", "between 0 and 2"},
                                         {R"({"prompt": "x", "top_p": 0})", "above 0"},
                                         {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
                                         {R"({"prompt": "x", "stop": [1]})", "stop"},
                                         {R"({"prompt": "x", "stream_options": {}})", "\"stream\": true"},
                                         {R"({"prompt": "x", "model": 5})", "model"}}) {
    absl::StatusOr<OpenAiRequest> request = ParseCompletionRequest(c.body);
    ASSERT_FALSE(request.ok()) << c.body;
    EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(request.status().message().find(c.expected), std::string::npos) << request.status() << " for " << c.body;
  }
  std::string deep(100, '[');
  EXPECT_FALSE(ParseCompletionRequest(deep).ok());
}

TEST(OpenAiRequestTest, ChatMessages) {
  absl::StatusOr<OpenAiRequest> request = ParseChatRequest(
      R"({"messages": [{"role": "system", "content": "S"},
                       {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                       {"role": "assistant", "content": null}],
          "max_completion_tokens": 4, "logprobs": true, "top_logprobs": 0, "add_generation_prompt": false})");
  ASSERT_TRUE(request.ok()) << request.status();
  ASSERT_EQ(request->messages.size(), 3u);
  EXPECT_EQ(request->messages[1].content, "ab");
  EXPECT_EQ(request->messages[2].content, "");
  EXPECT_EQ(request->sampling.max_tokens, 4);
  EXPECT_TRUE(request->sampling.logprobs);
  EXPECT_FALSE(request->add_generation_prompt);
  for (const char* bad : {R"({"messages": []})", R"({"messages": [{"content": "x"}]})",
                          R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
                          R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})",
                          R"({"messages": [{"role": "user", "content": "x"}], "tools": []})"}) {
    EXPECT_FALSE(ParseChatRequest(bad).ok()) << bad;
  }
}

TEST(OpenAiApiTest, StatusCodesMapToHttp) {
  EXPECT_EQ(OpenAiApi::HttpStatusOf(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(OpenAiApi::HttpStatusOf(absl::StatusCode::kFailedPrecondition), 400);
  EXPECT_EQ(OpenAiApi::HttpStatusOf(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(OpenAiApi::HttpStatusOf(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(OpenAiApi::HttpStatusOf(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(OpenAiApi::HttpStatusOf(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(OpenAiApi::HttpStatusOf(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(OpenAiApi::HttpStatusOf(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(OpenAiApi::HttpStatusOf(absl::StatusCode::kInternal), 500);
}

// Records what a handler answered.
class RecordingResponse : public HttpResponse {
 public:
  void Send(int status, std::string_view, std::string_view body, const HttpHeaders&) override {
    status_ = status;
    body_ = std::string(body);
  }
  bool StartStream(std::string_view, const HttpHeaders&) override { return false; }
  bool WriteChunk(std::string_view) override { return false; }
  void EndStream() override {}
  int status_ = 0;
  std::string body_;
};

TEST(HttpServerTest, RoutesByPathThenMethodAndServesOverTheLoopback) {
  HttpServerOptions options;
  options.not_found = &OpenAiApi::SendHttpError;
  absl::StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Start(
      options, {{"GET", "/a", [](const HttpRequest& request, HttpResponse& response) {
                   response.Send(200, "text/plain", "got " + request.Header("x-thing"));
                 }}});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);
  HttpRequest request;
  request.method = "GET";
  request.path = "/a";
  request.headers = {{"X-Thing", "1"}};
  RecordingResponse ok, wrong_method, no_route;
  (*server)->Dispatch(request, ok);
  EXPECT_EQ(ok.status_, 200);
  EXPECT_EQ(ok.body_, "got 1");
  request.method = "POST";
  (*server)->Dispatch(request, wrong_method);
  EXPECT_EQ(wrong_method.status_, 405);
  request.path = "/b";
  (*server)->Dispatch(request, no_route);
  EXPECT_EQ(no_route.status_, 404);
  EXPECT_NE(no_route.body_.find("\"error\""), std::string::npos);
}

}  // namespace
}  // namespace deltaserve::api
