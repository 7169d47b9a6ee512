// Integration: the OpenAI-compatible HTTP API of the real server on loopback. Completions
// (whole and streamed) give the same tokens as gRPC Generate for the same seed and variant;
// chat renders the model's template (checked against the prompt written out by hand and run
// over gRPC); /v1/models lists the base and the variants with root and parent; errors are
// OpenAI's JSON with 400/401/404/405/413/429/503; tenants' keys and quotas apply as on gRPC.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <sstream>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "server/common/file_util.h"
#include "server/common/sha256.h"
#include "tests/integration/http_client.h"
#include "tests/integration/shared_server.h"
#include "tests/support/wait_until.h"
#include "tools/demo_model.h"

namespace deltaserve::testing {
namespace {

using Json = nlohmann::json;

HttpReply Post(int port, const std::string& path, const Json& body, const std::vector<std::string>& headers = {}) {
  return HttpCall(port, "POST", path, body.dump(), headers);
}

// ErrorOf checks an OpenAI error reply and returns its message.
std::string ErrorOf(const HttpReply& reply, int status) {
  EXPECT_EQ(reply.status, status) << reply.head << "\n" << reply.body;
  const Json body = reply.Json();
  EXPECT_TRUE(body.is_object() && body.contains("error")) << reply.body;
  if (!body.is_object() || !body.contains("error")) return "";
  EXPECT_EQ(body["error"]["code"], status);
  EXPECT_TRUE(body["error"]["type"].is_string());
  return body["error"]["message"].get<std::string>();
}

class OpenAiHttpTest : public SharedServerTest<OpenAiHttpTest> {
 protected:
  static void SetUpTestSuite() {
    const std::string adapters = MakeTempDir("http-adapters");
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), adapters, 2, 4).ok());
    StartServer({"--adapter-dir", adapters, "--max-message-bytes", "65536", "--model-name", "tiny", "--log-format",
                 "json"});
  }
  int port() const { return server_->http_port(); }
};

v1::GenerateRequest Sampled(const std::string& prompt, int max_tokens, const std::string& variant, uint64_t seed) {
  v1::GenerateRequest request = Generate(prompt, max_tokens, variant);
  request.mutable_sampling()->set_temperature(0.9f);
  request.mutable_sampling()->set_top_p(0.95f);
  request.mutable_sampling()->set_seed(seed);
  request.mutable_sampling()->set_has_seed(true);
  request.set_include_logprobs(true);
  return request;
}

TEST_F(OpenAiHttpTest, CompletionGivesTheSameTokensAsGrpcForASeed) {
  for (const std::string variant : {"", "demo-001"}) {
    Stream grpc_stream = RunStream(*client_, Sampled("the cat reads", 12, variant, 42));
    ASSERT_TRUE(grpc_stream.status.ok()) << grpc_stream.status.error_message();
    Json body = {{"prompt", "the cat reads"}, {"max_tokens", 12}, {"temperature", 0.9}, {"top_p", 0.95},
                 {"seed", 42},  {"ignore_eos", true}, {"logprobs", 0}};
    if (!variant.empty()) body["model"] = variant;
    HttpReply reply = Post(port(), "/v1/completions", body);
    ASSERT_EQ(reply.status, 200) << reply.body;
    const Json result = reply.Json();
    EXPECT_EQ(result["object"], "text_completion");
    EXPECT_EQ(result["model"], variant.empty() ? "tiny" : variant) << result.dump();
    const Json& choice = result["choices"][0];
    EXPECT_EQ(choice["text"], grpc_stream.text) << variant;
    EXPECT_EQ(choice["finish_reason"], "length");
    EXPECT_EQ(result["usage"]["completion_tokens"], 12);
    EXPECT_EQ(result["usage"]["total_tokens"].get<int>(),
              result["usage"]["prompt_tokens"].get<int>() + 12);
    std::vector<float> grpc_logprobs;
    for (const v1::GenerateResponse& response : grpc_stream.responses) {
      grpc_logprobs.insert(grpc_logprobs.end(), response.logprobs().begin(), response.logprobs().end());
    }
    const Json& logprobs = choice["logprobs"]["token_logprobs"];
    ASSERT_EQ(logprobs.size(), grpc_logprobs.size());
    for (size_t i = 0; i < grpc_logprobs.size(); ++i) EXPECT_FLOAT_EQ(logprobs[i].get<float>(), grpc_logprobs[i]);
    EXPECT_EQ(choice["logprobs"]["tokens"].size(), 12u);
  }
}

// Penalties, min_p and logit_bias act inside the engine alike through both APIs: the same seeded
// request gives the same text over gRPC and HTTP, and a different one without them; a bias of 100
// makes greedy decoding pick its token every time, and a banned token never comes.
TEST_F(OpenAiHttpTest, PenaltiesAndLogitBiasActAlikeOverGrpcAndHttp) {
  v1::GenerateRequest request = Sampled("the cat reads", 12, "demo-001", 7);
  v1::SamplingParams* sampling = request.mutable_sampling();
  sampling->set_presence_penalty(0.8f);
  sampling->set_frequency_penalty(0.6f);
  sampling->set_repetition_penalty(1.2f);
  sampling->set_min_p(0.02f);
  (*sampling->mutable_logit_bias())[9] = 3.0f;
  Stream grpc_stream = RunStream(*client_, request);
  ASSERT_TRUE(grpc_stream.status.ok()) << grpc_stream.status.error_message();
  const Json body = {{"prompt", "the cat reads"}, {"max_tokens", 12}, {"temperature", 0.9}, {"top_p", 0.95},
                     {"seed", 7}, {"ignore_eos", true}, {"model", "demo-001"}, {"presence_penalty", 0.8},
                     {"frequency_penalty", 0.6}, {"repetition_penalty", 1.2}, {"min_p", 0.02},
                     {"logit_bias", {{"9", 3.0}}}};
  HttpReply reply = Post(port(), "/v1/completions", body);
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(reply.Json()["choices"][0]["text"], grpc_stream.text);
  Stream plain = RunStream(*client_, Sampled("the cat reads", 12, "demo-001", 7));
  ASSERT_TRUE(plain.status.ok());
  EXPECT_NE(plain.text, grpc_stream.text);

  v1::GenerateRequest forced;
  forced.set_prompt("the cat reads");
  forced.mutable_sampling()->set_max_tokens(6);
  forced.mutable_sampling()->set_ignore_eos(true);
  (*forced.mutable_sampling()->mutable_logit_bias())[9] = 100.0f;
  Stream forced_stream = RunStream(*client_, forced);
  ASSERT_TRUE(forced_stream.status.ok()) << forced_stream.status.error_message();
  std::vector<int32_t> tokens;
  for (const v1::GenerateResponse& response : forced_stream.responses) {
    tokens.insert(tokens.end(), response.token_ids().begin(), response.token_ids().end());
  }
  EXPECT_EQ(tokens, std::vector<int32_t>(6, 9));
  forced.mutable_sampling()->add_banned_token_ids(9);
  Stream banned_stream = RunStream(*client_, forced);
  ASSERT_TRUE(banned_stream.status.ok()) << banned_stream.status.error_message();
  for (const v1::GenerateResponse& response : banned_stream.responses) {
    for (int32_t token : response.token_ids()) EXPECT_NE(token, 9);
  }
  // A bad word: two adjacent tokens of a greedy output, given as text that the server encodes to
  // exactly those two; the same request with it never generates the pair.
  v1::GenerateRequest greedy;
  greedy.set_prompt("the cat reads");
  greedy.mutable_sampling()->set_max_tokens(16);
  greedy.mutable_sampling()->set_ignore_eos(true);
  auto ids_of = [](const Stream& stream) {
    std::vector<int32_t> ids;
    for (const v1::GenerateResponse& response : stream.responses) {
      ids.insert(ids.end(), response.token_ids().begin(), response.token_ids().end());
    }
    return ids;
  };
  auto contains_pair = [](const std::vector<int32_t>& ids, int32_t a, int32_t b) {
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      if (ids[i] == a && ids[i + 1] == b) return true;
    }
    return false;
  };
  const Stream plain_greedy = RunStream(*client_, greedy);
  ASSERT_TRUE(plain_greedy.status.ok());
  const std::vector<int32_t> greedy_ids = ids_of(plain_greedy);
  v1::TokenizeRequest whole;
  whole.set_text(plain_greedy.text);
  v1::TokenizeResponse pieces;
  ASSERT_TRUE(client_->Tokenize(whole, &pieces).ok());
  std::string word;
  int32_t first = -1, second = -1;
  for (int i = 0; i + 1 < pieces.token_ids_size() && word.empty(); ++i) {
    if (!contains_pair(greedy_ids, pieces.token_ids(i), pieces.token_ids(i + 1))) continue;
    v1::TokenizeRequest candidate;
    candidate.set_text(pieces.tokens(i) + pieces.tokens(i + 1));
    v1::TokenizeResponse encoded;
    ASSERT_TRUE(client_->Tokenize(candidate, &encoded).ok());
    if (encoded.token_ids_size() == 2 && encoded.token_ids(0) == pieces.token_ids(i) &&
        encoded.token_ids(1) == pieces.token_ids(i + 1)) {
      word = candidate.text();
      first = pieces.token_ids(i);
      second = pieces.token_ids(i + 1);
    }
  }
  ASSERT_FALSE(word.empty()) << "no pair of the greedy output re-encodes to itself: " << plain_greedy.text;
  greedy.mutable_sampling()->add_bad_words(word);
  const Stream without_word = RunStream(*client_, greedy);
  ASSERT_TRUE(without_word.status.ok()) << without_word.status.error_message();
  EXPECT_FALSE(contains_pair(ids_of(without_word), first, second)) << "\"" << word << "\": " << without_word.text;
  for (int i = 0; i < 300; ++i) forced.mutable_sampling()->add_bad_words("x");
  Stream too_many_words = RunStream(*client_, forced);
  EXPECT_EQ(too_many_words.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(too_many_words.status.error_message().find("bad_words"), std::string::npos);
  forced.mutable_sampling()->clear_bad_words();
  forced.mutable_sampling()->set_presence_penalty(5.0f);
  Stream refused = RunStream(*client_, forced);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("presence_penalty"), std::string::npos);
}

TEST_F(OpenAiHttpTest, StreamedCompletionAddsUpToTheWholeOne) {
  const Json body = {{"prompt", "a distant star"}, {"max_tokens", 16}, {"seed", 7}, {"ignore_eos", true},
                     {"model", "demo-000"}};
  HttpReply whole = Post(port(), "/v1/completions", body);
  ASSERT_EQ(whole.status, 200) << whole.body;
  Json streamed_body = body;
  streamed_body["stream"] = true;
  streamed_body["stream_options"] = {{"include_usage", true}};
  HttpReply stream = Post(port(), "/v1/completions", streamed_body);
  ASSERT_EQ(stream.status, 200) << stream.body;
  EXPECT_EQ(stream.Header("Content-Type"), "text/event-stream");
  std::vector<std::string> events = SseData(stream.body);
  ASSERT_GE(events.size(), 4u) << stream.body;
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  Json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const Json event = Json::parse(events[i]);
    EXPECT_EQ(event["object"], "text_completion");
    if (event.contains("usage")) {
      usage = event["usage"];
      EXPECT_TRUE(event["choices"].empty());
      continue;
    }
    text += event["choices"][0]["text"].get<std::string>();
    if (!event["choices"][0]["finish_reason"].is_null()) finish = event["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, whole.Json()["choices"][0]["text"]);
  EXPECT_EQ(finish, "length");
  EXPECT_EQ(usage["completion_tokens"], 16);
}

TEST_F(OpenAiHttpTest, UsageReportsPromptTokensFoundInThePrefixCache) {
  // A system prompt of several 16-token blocks, seen for the first time, then again.
  const Json messages = Json::array(
      {{{"role", "system"},
        {"content", "You are the archivist of the northern harbour. You answer in one short sentence, you never "
                    "guess, and you name the shelf where each record is kept."}},
       {{"role", "user"}, {"content", "where is the ledger"}}});
  const Json body = {{"messages", messages}, {"max_tokens", 4}, {"model", "demo-001"}};
  HttpReply first = Post(port(), "/v1/chat/completions", body);
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(first.Json()["usage"]["prompt_tokens_details"]["cached_tokens"], 0) << first.body;
  Json streamed = body;
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}};
  HttpReply second = Post(port(), "/v1/chat/completions", streamed);
  ASSERT_EQ(second.status, 200) << second.body;
  std::vector<std::string> events = SseData(second.body);
  ASSERT_GE(events.size(), 2u);
  const Json usage = Json::parse(events[events.size() - 2])["usage"];
  const int prompt = usage["prompt_tokens"].get<int>();
  EXPECT_EQ(prompt, first.Json()["usage"]["prompt_tokens"].get<int>());
  EXPECT_EQ(usage["prompt_tokens_details"]["cached_tokens"].get<int>(), (prompt - 1) / 16 * 16) << usage.dump();
  EXPECT_GE(prompt, 32);
}

TEST_F(OpenAiHttpTest, NChoicesEqualSingleRequestsWithTheDerivedSeedsOverGrpcAndHttp) {
  // gRPC: n = 4 in one stream, each message tagged with its choice.
  v1::GenerateRequest several = Sampled("the cat reads", 10, "demo-001", 500);
  several.mutable_sampling()->set_n(4);
  Stream stream = RunStream(*client_, several);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  std::map<int, std::vector<int32_t>> tokens;
  std::map<int, std::string> texts;
  std::set<int> ended;
  for (const v1::GenerateResponse& response : stream.responses) {
    tokens[response.index()].insert(tokens[response.index()].end(), response.token_ids().begin(),
                                    response.token_ids().end());
    texts[response.index()] += response.text();
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED && !response.has_usage()) ended.insert(response.index());
  }
  EXPECT_EQ(ended, (std::set<int>{0, 1, 2, 3}));
  ASSERT_TRUE(stream.responses.back().has_usage());
  EXPECT_EQ(stream.responses.back().usage().completion_tokens(), 40);
  for (int i = 0; i < 4; ++i) {
    Stream single = RunStream(*client_, Sampled("the cat reads", 10, "demo-001", 500 + i));
    ASSERT_TRUE(single.status.ok());
    EXPECT_EQ(tokens[i], single.tokens) << "choice " << i;
    EXPECT_EQ(texts[i], single.text) << "choice " << i;
  }

  // HTTP: the same choices, whole and streamed.
  const Json body = {{"prompt", "the cat reads"}, {"max_tokens", 10}, {"temperature", 0.9}, {"top_p", 0.95},
                     {"seed", 500}, {"ignore_eos", true}, {"model", "demo-001"}, {"n", 4}};
  HttpReply whole = Post(port(), "/v1/completions", body);
  ASSERT_EQ(whole.status, 200) << whole.body;
  const Json answer = whole.Json();
  const Json& choices = answer["choices"];
  ASSERT_EQ(choices.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(choices[i]["index"], i);
    EXPECT_EQ(choices[i]["text"], texts[i]);
    EXPECT_EQ(choices[i]["finish_reason"], "length");
  }
  EXPECT_EQ(answer["usage"]["completion_tokens"], 40);
  Json streamed_body = body;
  streamed_body["stream"] = true;
  HttpReply streamed = Post(port(), "/v1/completions", streamed_body);
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  std::map<int, std::string> streamed_texts;
  std::map<int, std::string> finishes;
  for (const std::string& data : SseData(streamed.body)) {
    if (data == "[DONE]") continue;
    const Json event = Json::parse(data);
    for (const Json& choice : event["choices"]) {
      streamed_texts[choice["index"].get<int>()] += choice["text"].get<std::string>();
      if (!choice["finish_reason"].is_null()) finishes[choice["index"].get<int>()] = choice["finish_reason"];
    }
  }
  EXPECT_EQ(streamed_texts, texts);
  EXPECT_EQ(finishes.size(), 4u);

  // Out of range: a clear error naming the field.
  Json too_many = body;
  too_many["n"] = 17;
  HttpReply refused = Post(port(), "/v1/completions", too_many);
  EXPECT_EQ(refused.status, 400);
  EXPECT_NE(refused.body.find("\\\"n\\\" must be between 1 and 16"), std::string::npos) << refused.body;
}

TEST_F(OpenAiHttpTest, ChatRendersTheModelsTemplate) {
  // The demo template (tools/demo_model.h), written out by hand for this conversation.
  const std::string rendered = "<<SYS>> Be brief. <</SYS>>\n[INST] name a cat [/INST] Tom</s>[INST] another [/INST]";
  // "</s>" is the EOS token, not text: tokenize around it.
  v1::TokenizeRequest first, second;
  first.set_text("<<SYS>> Be brief. <</SYS>>\n[INST] name a cat [/INST] Tom");
  first.set_add_special_tokens(true);  // BOS
  second.set_text("[INST] another [/INST]");
  v1::TokenizeResponse first_ids, second_ids;
  ASSERT_TRUE(client_->Tokenize(first, &first_ids).ok());
  ASSERT_TRUE(client_->Tokenize(second, &second_ids).ok());
  v1::GenerateRequest direct = Generate("", 10);
  direct.mutable_prompt_token_ids()->Add(first_ids.token_ids().begin(), first_ids.token_ids().end());
  direct.add_prompt_token_ids(2);  // </s>
  direct.mutable_prompt_token_ids()->Add(second_ids.token_ids().begin(), second_ids.token_ids().end());
  Stream expected = RunStream(*client_, direct);
  ASSERT_TRUE(expected.status.ok()) << expected.status.error_message();

  const Json body = {{"messages",
                      {{{"role", "system"}, {"content", "Be brief."}},
                       {{"role", "user"}, {"content", "name a cat"}},
                       {{"role", "assistant"}, {"content", "Tom"}},
                       {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "another"}}}}}}},
                     {"max_tokens", 10},
                     {"temperature", 0},
                     {"ignore_eos", true}};
  HttpReply reply = Post(port(), "/v1/chat/completions", body);
  ASSERT_EQ(reply.status, 200) << reply.body;
  const Json result = reply.Json();
  EXPECT_EQ(result["object"], "chat.completion");
  EXPECT_EQ(result["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(result["choices"][0]["message"]["content"], expected.text);
  EXPECT_EQ(result["usage"]["prompt_tokens"].get<int>(), direct.prompt_token_ids_size()) << rendered;

  Json streamed = body;
  streamed["stream"] = true;
  HttpReply stream = Post(port(), "/v1/chat/completions", streamed);
  ASSERT_EQ(stream.status, 200);
  std::vector<std::string> events = SseData(stream.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(Json::parse(events[0])["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const Json event = Json::parse(events[i]);
    EXPECT_EQ(event["object"], "chat.completion.chunk");
    text += event["choices"][0]["delta"].value("content", "");
  }
  EXPECT_EQ(text, expected.text);

  // The template refuses a role it does not know: a 400 with its message.
  HttpReply refused = Post(port(), "/v1/chat/completions",
                           {{"messages", {{{"role", "narrator"}, {"content", "x"}}}}, {"max_tokens", 2}});
  EXPECT_NE(ErrorOf(refused, 400).find("unknown role: narrator"), std::string::npos) << refused.body;
}

// Every finished request logs one JSON line with its request id (X-Request-Id when given).
TEST_F(OpenAiHttpTest, RequestsLogJsonLinesWithTheirIds) {
  ASSERT_EQ(Post(port(), "/v1/completions", {{"prompt", "x"}, {"max_tokens", 3}, {"model", "demo-000"}},
                 {"X-Request-Id: trace-41"})
                .status,
            200);
  v1::GenerateRequest request = Generate("x", 2);
  request.set_request_id("trace-42");
  ASSERT_TRUE(RunStream(*client_, request).status.ok());
  std::map<std::string, Json> by_id;
  std::vector<std::string> not_json;
  // The access log is written as each call ends, which may be just after the client heard it.
  testing::WaitUntil([&] {
    std::istringstream log(server_->Log());
    for (std::string line; std::getline(log, line);) {
      const Json entry = Json::parse(line, nullptr, false);
      if (entry.is_discarded()) {
        not_json.push_back(line);
      } else if (entry.value("request_id", "").rfind("trace-4", 0) == 0) {
        by_id[entry["request_id"]] = entry;
      }
    }
    return by_id.size() >= 2 || !not_json.empty();
  });
  ASSERT_TRUE(not_json.empty()) << "not JSON: " << not_json.front();
  ASSERT_EQ(by_id.size(), 2u) << server_->Log();
  EXPECT_EQ(by_id["trace-41"]["api"], "http");
  EXPECT_EQ(by_id["trace-41"]["variant"], "demo-000@1");
  EXPECT_EQ(by_id["trace-41"]["completion_tokens"], "3");
  EXPECT_EQ(by_id["trace-41"]["status"], "OK");
  EXPECT_EQ(by_id["trace-42"]["api"], "grpc");
  EXPECT_EQ(by_id["trace-42"]["message"], "request finished");
  EXPECT_TRUE(by_id["trace-42"].contains("time"));
}

TEST_F(OpenAiHttpTest, ModelsListsTheBaseAndTheVariants) {
  HttpReply reply = HttpCall(port(), "GET", "/v1/models");
  ASSERT_EQ(reply.status, 200) << reply.body;
  const Json models = reply.Json();
  EXPECT_EQ(models["object"], "list");
  std::map<std::string, Json> by_id;
  for (const Json& model : models["data"]) by_id[model["id"]] = model;
  ASSERT_EQ(by_id.size(), 3u) << reply.body;
  EXPECT_TRUE(by_id["tiny"]["parent"].is_null());
  for (const char* variant : {"demo-000", "demo-001"}) {
    ASSERT_TRUE(by_id.count(variant)) << reply.body;
    EXPECT_EQ(by_id[variant]["root"], "tiny");
    EXPECT_EQ(by_id[variant]["parent"], "tiny");
    EXPECT_EQ(by_id[variant]["object"], "model");
  }
}

TEST_F(OpenAiHttpTest, BadRequestsGetOpenAiErrors) {
  EXPECT_NE(ErrorOf(HttpCall(port(), "POST", "/v1/completions", "{not json"), 400).find("not valid JSON"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Post(port(), "/v1/completions", {{"max_tokens", 3}}), 400).find("\"prompt\" is required"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Post(port(), "/v1/completions", {{"prompt", "x"}, {"n", 0}}), 400).find("\"n\""), std::string::npos);
  EXPECT_NE(ErrorOf(Post(port(), "/v1/completions", {{"prompt", "x"}, {"temperature", "hot"}}), 400).find("temperature"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Post(port(), "/v1/completions", {{"prompt", "x"}, {"logprobs", 5}}), 400).find("top alternatives"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Post(port(), "/v1/completions", {{"prompt", "x"}, {"max_tokens", 100000}}), 400).find("max_tokens"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Post(port(), "/v1/chat/completions", {{"messages", Json::array()}}), 400).find("messages"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Post(port(), "/v1/completions", {{"prompt", "x"}, {"model", "nope"}}), 404).find("\"nope\""),
            std::string::npos);
  ErrorOf(HttpCall(port(), "GET", "/v1/completions"), 405);
  ErrorOf(HttpCall(port(), "GET", "/v2/anything"), 404);
  ErrorOf(HttpCall(port(), "POST", "/v1/completions", std::string(70000, ' ')), 413);
  // The same server still serves after all of that.
  EXPECT_EQ(Post(port(), "/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}}).status, 200);
  EXPECT_EQ(HttpCall(port(), "GET", "/health").status, 200);
  EXPECT_NE(HttpCall(port(), "GET", "/metrics").body.find("vllm:num_requests_running"), std::string::npos);
}

// Idle connections that never send a byte, far more than the server has worker threads, leave
// /health and completions answered at once (a thread per connection answered nothing until they
// timed out).
TEST_F(OpenAiHttpTest, IdleConnectionsLeaveHealthAndCompletionsAnswered) {
  std::vector<int> idle;
  for (int i = 0; i < 300; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port()));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    idle.push_back(fd);
  }
  const auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(HttpCall(port(), "GET", "/health", "", {}, 5000).status, 200);
  EXPECT_EQ(HttpCall(port(), "POST", "/v1/completions", Json{{"prompt", "x"}, {"max_tokens", 2}}.dump(), {}, 5000).status,
            200);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(3));
  for (int fd : idle) ::close(fd);
}

TEST(OpenAiHttpTenantsTest, KeysAndQuotasApplyAsOnGrpc) {
  const std::string data_dir = MakeTempDir("http-tenants");
  const std::string config = data_dir + "/config.textproto";
  ASSERT_TRUE(common::WriteFileAtomically(
                  config, "tenants { name: \"acme\" role: TENANT api_key_sha256: \"" + common::Sha256Hex("acme-key") +
                              "\" namespaces: \"acme\" quotas { generated_tokens_per_minute: 4 } }\n")
                  .ok());
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir(), {"--config", config, "--data-dir", data_dir}));
  const Json body = {{"prompt", "the cat"}, {"max_tokens", 2}};
  EXPECT_NE(ErrorOf(Post(server.http_port(), "/v1/completions", body), 401).find("Bearer"), std::string::npos);
  ErrorOf(Post(server.http_port(), "/v1/completions", body, {"Authorization: Bearer wrong"}), 401);
  ErrorOf(HttpCall(server.http_port(), "GET", "/v1/models"), 401);
  const std::vector<std::string> acme = {"Authorization: Bearer acme-key"};
  // Its 8 tokens overdraw the tenant's 4 tokens a minute: the next request must wait.
  EXPECT_EQ(Post(server.http_port(), "/v1/completions", {{"prompt", "the cat"}, {"max_tokens", 8}, {"ignore_eos", true}},
                 acme)
                .status,
            200);
  HttpReply refused = Post(server.http_port(), "/v1/completions", body, acme);
  EXPECT_NE(ErrorOf(refused, 429).find("generated_tokens_per_minute"), std::string::npos);
  EXPECT_GT(std::atoi(refused.Header("Retry-After").c_str()), 0) << refused.head;
  EXPECT_EQ(refused.Json()["error"]["type"], "rate_limit_error");
}


// The series on /metrics name every tenant's variants, so on the API port (which tenants reach)
// only an admin's key reads them; the in-cluster metrics port serves the endpoint picker.
TEST(OpenAiHttpTenantsTest, MetricsOnTheApiPortAreForAdminsOnly) {
  const std::string data_dir = MakeTempDir("http-metrics-tenants");
  const std::string adapters = MakeTempDir("http-metrics-adapters");
  ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), adapters, 2, 4).ok());
  const std::string config = data_dir + "/config.textproto";
  ASSERT_TRUE(common::WriteFileAtomically(
                  config, "tenants { name: \"ops\" role: ADMIN api_key_sha256: \"" + common::Sha256Hex("ops-key") +
                              "\" }\ntenants { name: \"acme\" role: TENANT api_key_sha256: \"" +
                              common::Sha256Hex("acme-key") + "\" namespaces: \"acme\" }\n")
                  .ok());
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir(), {"--config", config, "--data-dir", data_dir, "--adapter-dir", adapters}));
  const std::vector<std::string> acme = {"Authorization: Bearer acme-key"};
  const std::vector<std::string> ops = {"Authorization: Bearer ops-key"};
  std::thread running([&] {
    Post(server.http_port(), "/v1/completions",
         {{"model", "demo-001"}, {"prompt", "the cat"}, {"max_tokens", 1500}, {"ignore_eos", true}}, acme);
  });
  std::string admin_scrape;
  const bool seen = WaitUntil([&] {
    admin_scrape = HttpCall(server.http_port(), "GET", "/metrics", "", ops).body;
    return admin_scrape.find("running_lora_adapters=\"demo-001\"") != std::string::npos;
  });
  const HttpReply anonymous = HttpCall(server.http_port(), "GET", "/metrics");
  const HttpReply tenant = HttpCall(server.http_port(), "GET", "/metrics", "", acme);
  const std::string picker_scrape = HttpGet(server.metrics_port(), "/metrics/endpoint-picker");
  running.join();
  ASSERT_TRUE(seen) << admin_scrape;
  ErrorOf(anonymous, 401);
  EXPECT_NE(ErrorOf(tenant, 403).find("metrics port"), std::string::npos);
  for (const HttpReply* reply : {&anonymous, &tenant}) {
    EXPECT_EQ(reply->body.find("demo-001"), std::string::npos) << reply->body;
    EXPECT_EQ(reply->body.find("lora"), std::string::npos) << reply->body;
  }
  EXPECT_NE(picker_scrape.find("vllm:lora_requests_info"), std::string::npos) << picker_scrape;
  EXPECT_NE(picker_scrape.find("vllm:num_requests_waiting"), std::string::npos);
}

}  // namespace
}  // namespace deltaserve::testing
