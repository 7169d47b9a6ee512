// Integration: the real deltaserve binary on a loopback port, driven over real gRPC and HTTP.
// Every test bounds its traffic (count and time) and talks only to 127.0.0.1.
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>

#include <atomic>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "client/deltaserve_client.h"
#include "tests/integration/http_client.h"
#include "tests/integration/reflection.grpc.pb.h"  // generated under build/proto
#include "tests/integration/rpc_helpers.h"
#include "tests/integration/server_process.h"
#include "tests/integration/shared_server.h"
#include "tests/support/test_models.h"
#include "tests/support/wait_until.h"
#include "tools/demo_model.h"

namespace deltaserve::testing {
namespace {

class ServerTest : public SharedServerTest<ServerTest> {
 protected:
  static void SetUpTestSuite() { StartServer(); }
};

TEST_F(ServerTest, HealthIsServing) {
  client::HealthStatus health;
  ASSERT_TRUE(client_->Health("", &health).ok());
  EXPECT_EQ(health, client::HealthStatus::kServing);
}

TEST_F(ServerTest, StreamsAGeneration) {
  Stream stream = RunStream(*client_, Generate("the cat reads", 20));
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  ASSERT_GE(stream.responses.size(), 2u);  // streamed, not one reply
  const v1::GenerateResponse& last = stream.responses.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), 20);
  EXPECT_GT(last.usage().prompt_tokens(), 1);
  EXPECT_GT(last.usage().time_to_first_token_seconds(), 0);
  EXPECT_EQ(stream.tokens.size(), 20u);
  EXPECT_EQ(stream.responses[0].request_id().rfind("req-", 0), 0u);  // assigned by the server
  for (size_t i = 0; i + 1 < stream.responses.size(); ++i) {
    EXPECT_EQ(stream.responses[i].finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
  }
  // Greedy decoding is deterministic; the same request gives the same stream.
  v1::GenerateRequest same = Generate("the cat reads", 20);
  same.set_request_id("caller-42");
  Stream again = RunStream(*client_, same);
  EXPECT_EQ(again.tokens, stream.tokens);
  EXPECT_EQ(again.text, stream.text);
  for (const auto& response : again.responses) EXPECT_EQ(response.request_id(), "caller-42");
}

TEST_F(ServerTest, SixteenConcurrentStreams) {
  Stream solo = RunStream(*client_, Generate("our team builds", 24));
  ASSERT_TRUE(solo.status.ok());
  std::vector<Stream> streams(16);
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateRequest request = Generate(i % 2 == 0 ? "our team builds" : "a distant star", 24);
      if (i % 4 == 1) {
        request.mutable_sampling()->set_temperature(0.8f);
        request.mutable_sampling()->set_seed(1000 + i);
        request.mutable_sampling()->set_has_seed(true);
      }
      streams[i] = RunStream(*client_, request);
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(streams[i].status.ok()) << i << ": " << streams[i].status.error_message();
    EXPECT_EQ(streams[i].tokens.size(), 24u);
    if (i % 2 == 0) {
      EXPECT_EQ(streams[i].tokens, solo.tokens) << i;  // batching changes nothing
    }
  }
}

TEST_F(ServerTest, CancellationFreesTheKvCache) {
  int seen = 0;
  Stream stream = RunStream(*client_, Generate("the server serves", 4000), std::chrono::seconds(60),
                      [&seen] { return ++seen >= 3; });
  EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(stream.tokens.size(), 4000u);
  double usage = -1;
  WaitUntil([&] {
    std::string scrape = HttpGet(server_->metrics_port(), "/metrics");
    usage = Sample(scrape, "deltaserve_kv_cache_usage_ratio");
    return usage == 0 && Sample(scrape, "deltaserve_requests_running") == 0;
  });
  EXPECT_EQ(usage, 0.0);
}

TEST_F(ServerTest, DeadlineExceeded) {
  const std::string counted = "deltaserve_requests_total{code=\"DEADLINE_EXCEEDED\",method=\"Generate\"}";
  const std::string cancelled = "deltaserve_requests_total{code=\"CANCELLED\",method=\"Generate\"}";
  auto sample = [&](const std::string& name) {
    return std::max(0.0, Sample(HttpGet(server_->metrics_port(), "/metrics"), name));
  };
  const double before = sample(counted);
  const double cancelled_before = sample(cancelled);
  // The tiny model's whole context takes longer than 30 ms to generate. A call whose deadline
  // expires before gRPC hands it to the handler (a loaded machine) is answered by gRPC itself and
  // never reaches the server's counters: then try again, a few times at most.
  bool seen = false;
  for (int attempt = 0; attempt < 5 && !seen; ++attempt) {
    Stream stream = RunStream(*client_, Generate("the cat", 4000), std::chrono::milliseconds(30));
    EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    seen = WaitUntil([&] { return sample(counted) >= before + 1; }, absl::Seconds(3));
  }
  // The server counts it as such, not as CANCELLED (gRPC cancels the call at its deadline).
  EXPECT_TRUE(seen);
  EXPECT_EQ(sample(counted), before + 1);
  EXPECT_EQ(sample(cancelled), cancelled_before);
}

TEST_F(ServerTest, InvalidInputsAreExplained) {
  auto expect = [&](const v1::GenerateRequest& request, grpc::StatusCode code, const std::string& fragment) {
    Stream stream = RunStream(*client_, request);
    EXPECT_EQ(stream.status.error_code(), code) << stream.status.error_message();
    EXPECT_NE(stream.status.error_message().find(fragment), std::string::npos)
        << stream.status.error_message();
    EXPECT_TRUE(stream.responses.empty());
  };
  expect(Generate("", 5), grpc::StatusCode::INVALID_ARGUMENT, "the input is empty");
  expect(v1::GenerateRequest(), grpc::StatusCode::INVALID_ARGUMENT, "set prompt or prompt_token_ids");
  v1::GenerateRequest both = Generate("x", 5);
  both.add_prompt_token_ids(1);
  expect(both, grpc::StatusCode::INVALID_ARGUMENT, "not both");
  v1::GenerateRequest unknown = Generate("x", 5);
  unknown.set_variant("acme/no-such-adapter");
  expect(unknown, grpc::StatusCode::NOT_FOUND, "acme/no-such-adapter");
  v1::GenerateRequest out_of_vocabulary;
  out_of_vocabulary.add_prompt_token_ids(1);
  out_of_vocabulary.add_prompt_token_ids(1 << 30);
  expect(out_of_vocabulary, grpc::StatusCode::INVALID_ARGUMENT, "outside the vocabulary");
  expect(Generate("x", 100000), grpc::StatusCode::INVALID_ARGUMENT, "max_tokens");
  v1::GenerateRequest too_long;
  for (int i = 0; i < 600; ++i) too_long.add_prompt_token_ids(5);
  expect(too_long, grpc::StatusCode::INVALID_ARGUMENT, "context");
  v1::GenerateRequest bad_top_p = Generate("x", 5);
  bad_top_p.mutable_sampling()->set_top_p(2.0f);
  expect(bad_top_p, grpc::StatusCode::INVALID_ARGUMENT, "top_p");
  // A request id is logged: one with a line break could forge a log line.
  v1::GenerateRequest forging = Generate("x", 5);
  forging.set_request_id("abc\n2026-12-07T00:00:00.000Z deltaserve: request finished status=OK");
  expect(forging, grpc::StatusCode::INVALID_ARGUMENT, "without control characters");
  v1::GenerateRequest long_id = Generate("x", 5);
  long_id.set_request_id(std::string(129, 'r'));
  expect(long_id, grpc::StatusCode::INVALID_ARGUMENT, "at most 128 bytes");

  v1::ScoreRequest empty_score;
  v1::ScoreResponse score_response;
  grpc::Status status = client_->Score(empty_score, &score_response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Calls with oversized metadata fail (and after a few gRPC closes their connection); other
// connections, open before and opened after, are served throughout.
TEST_F(ServerTest, OversizedMetadataOnOneConnectionDoesNotAffectOthers) {
  auto channel = [&] {  // its own connection: channels share subchannels unless told not to
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return v1::Generation::NewStub(grpc::CreateCustomChannel(server_->target(), grpc::InsecureChannelCredentials(), args));
  };
  // wait_for_ready: the call may wait for its channel to reconnect (for the noisy client, whose
  // connection the server may have closed); the bystander's calls never wait.
  auto tokenize = [](v1::Generation::Stub& stub, size_t padding, bool wait_for_ready = false) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    context.set_wait_for_ready(wait_for_ready);
    if (padding > 0) context.AddMetadata("x-padding", std::string(padding, 'p'));
    v1::TokenizeRequest request;
    request.set_text("the cat reads");
    v1::TokenizeResponse response;
    return stub.Tokenize(&context, request, &response);
  };
  auto bystander = channel();
  ASSERT_TRUE(tokenize(*bystander, 0).ok());
  auto noisy = channel();
  int refused = 0;
  for (int i = 0; i < 20; ++i) {
    refused += tokenize(*noisy, 64 << 10).ok() ? 0 : 1;
    ASSERT_TRUE(tokenize(*bystander, 0).ok()) << "after oversized call " << i;
  }
  EXPECT_EQ(refused, 20);
  EXPECT_TRUE(tokenize(*channel(), 0).ok()) << "a new connection is served";
  EXPECT_TRUE(tokenize(*noisy, 0, /*wait_for_ready=*/true).ok())
      << "the noisy client itself recovers with normal calls";
}

TEST_F(ServerTest, ScoreAndTokenize) {
  v1::TokenizeRequest tokenize;
  tokenize.set_text("the cat reads");
  tokenize.set_add_special_tokens(true);
  v1::TokenizeResponse tokens;
  ASSERT_TRUE(client_->Tokenize(tokenize, &tokens).ok());
  ASSERT_GT(tokens.token_ids_size(), 2);
  EXPECT_EQ(tokens.token_ids(0), 1);  // BOS
  v1::ScoreRequest score;
  score.set_text("the cat reads");
  v1::ScoreResponse scored;
  ASSERT_TRUE(client_->Score(score, &scored).ok());
  ASSERT_EQ(scored.token_ids_size(), tokens.token_ids_size());
  ASSERT_EQ(scored.token_logprobs_size(), scored.token_ids_size() - 1);
  double sum = 0;
  for (float logprob : scored.token_logprobs()) {
    EXPECT_LE(logprob, 0.0f);
    sum += logprob;
  }
  EXPECT_NEAR(scored.total_logprob(), sum, 1e-3);

  // Text longer than any that fits the context is refused before it is tokenized (a 3.6 MB
  // Tokenize once took 5 s of CPU): 64 KiB for the tiny model's 512-token context.
  tokenize.set_text(std::string(3600000, 'a'));
  grpc::Status huge = client_->Tokenize(tokenize, &tokens);
  EXPECT_EQ(huge.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(huge.error_message().find("text is 3600000 bytes; at most 65536 are accepted"), std::string::npos)
      << huge.error_message();
  Stream prompt = RunStream(*client_, Generate(std::string(70000, 'a'), 4));
  EXPECT_EQ(prompt.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(prompt.status.error_message().find("prompt is 70000 bytes"), std::string::npos)
      << prompt.status.error_message();
}

TEST_F(ServerTest, MetricsScrapeShowsTheFamilies) {
  ASSERT_TRUE(RunStream(*client_, Generate("the baker", 8)).status.ok());
  // The RPC is counted in OnDone, which gRPC may run just after the client has its status.
  std::string scrape;
  WaitUntil([&] {
    scrape = HttpGet(server_->metrics_port(), "/metrics");
    return Sample(scrape, "deltaserve_requests_running") == 0 &&
           Sample(scrape, "deltaserve_requests_total{code=\"OK\",method=\"Generate\"}") >= 1;
  });
  for (const char* family :
       {"deltaserve_requests_total", "deltaserve_time_to_first_token_seconds",
        "deltaserve_inter_token_latency_seconds", "deltaserve_request_duration_seconds",
        "deltaserve_request_queue_seconds", "deltaserve_prompt_tokens_total",
        "deltaserve_generated_tokens_total", "deltaserve_requests_running",
        "deltaserve_requests_waiting", "deltaserve_batch_tokens", "deltaserve_kv_cache_usage_ratio",
        "deltaserve_lora_requests_info"}) {
    EXPECT_NE(scrape.find(std::string("# HELP ") + family + " "), std::string::npos) << family;
  }
  EXPECT_GE(Sample(scrape, "deltaserve_requests_total{code=\"OK\",method=\"Generate\"}"), 1);
  EXPECT_GE(Sample(scrape, "deltaserve_generated_tokens_total"), 8);
  EXPECT_GE(Sample(scrape, "deltaserve_time_to_first_token_seconds_count"), 1);
  EXPECT_GE(Sample(scrape, "deltaserve_inter_token_latency_seconds_count"), 7);
  EXPECT_GE(Sample(scrape, "deltaserve_batch_tokens_count"), 8);
  double usage = Sample(scrape, "deltaserve_kv_cache_usage_ratio");
  EXPECT_GE(usage, 0);
  EXPECT_LE(usage, 1);
  EXPECT_EQ(Sample(scrape, "deltaserve_requests_running"), 0);
  EXPECT_NE(HttpGet(server_->metrics_port(), "/nothing"), scrape);
}

TEST_F(ServerTest, ReflectionListsTheServices) {
  auto channel = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = stub->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("*");
  ASSERT_TRUE(stream->Write(request));
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::set<std::string> names;
  for (const auto& service : response.list_services_response().service()) names.insert(service.name());
  EXPECT_TRUE(names.count("deltaserve.v1.Generation"));
  EXPECT_TRUE(names.count("grpc.health.v1.Health"));
  while (stream->Read(&response)) {
  }
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServerTest, DeltactlStreamsScoresAndReportsHealth) {
  std::string out, err;
  ASSERT_EQ(RunDeltactl("health --target " + server_->target(), &out, &err), 0) << err;
  EXPECT_EQ(out, "SERVING\n");
  ASSERT_EQ(RunDeltactl("generate --target " + server_->target() + " --max-tokens 12 --ignore-eos 'the cat reads'",
                        &out, &err),
            0)
      << err;
  Stream direct = RunStream(*client_, Generate("the cat reads", 12));
  ASSERT_TRUE(direct.status.ok());
  EXPECT_EQ(out, direct.text + "\n");  // the streamed text, exactly
  EXPECT_NE(err.find("generated 12 tokens"), std::string::npos) << err;
  ASSERT_EQ(RunDeltactl("score --target " + server_->target() + " 'the cat reads'", &out, &err), 0) << err;
  EXPECT_NE(out.find("total_logprob"), std::string::npos);
  ASSERT_EQ(RunDeltactl("tokenize --target " + server_->target() + " 'the cat'", &out, &err), 0) << err;
  EXPECT_EQ(out.rfind("1\t", 0), 0u) << out;  // BOS first
  EXPECT_EQ(RunDeltactl("generate --target " + server_->target() + " --variant nope 'x'", &out, &err), 1);
  EXPECT_NE(err.find("not found"), std::string::npos) << err;
}

TEST(DeltactlTest, ServerDownIsAClearError) {
  std::string out, err;
  EXPECT_EQ(RunDeltactl("generate --target 127.0.0.1:1 --timeout 5 'hello'", &out, &err), 1);
  EXPECT_NE(err.find("cannot reach 127.0.0.1:1 (is deltaserve running there?)"), std::string::npos) << err;
  EXPECT_EQ(RunDeltactl("health --target 127.0.0.1:1", &out, &err), 1);
  EXPECT_NE(err.find("cannot reach"), std::string::npos) << err;
}

// The digest a --config tenant holds for a key: SHA-256 in hex (FIPS 180-4's "abc" vector), from
// the argument or from standard input.
TEST(DeltactlTest, KeysHashPrintsTheDigestAConfigHolds) {
  std::string out, err;
  ASSERT_EQ(RunDeltactl("keys hash abc", &out, &err), 0) << err;
  EXPECT_EQ(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n");
  ASSERT_EQ(RunDeltactl("keys hash < /dev/null", &out, &err), 2);
  EXPECT_NE(err.find("no key on standard input"), std::string::npos) << err;
  EXPECT_EQ(RunDeltactl("keys", &out, &err), 2);
  EXPECT_NE(err.find("usage: deltactl keys hash"), std::string::npos) << err;
}

// A server with 8 demo adapters registered from --adapter-dir (two in a namespace).
class AdapterServerTest : public SharedServerTest<AdapterServerTest> {
 protected:
  static void SetUpTestSuite() {
    const std::string adapters = MakeTempDir("adapter-dir");
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), adapters, 6, 4).ok());
    ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), adapters + "/acme", 2, 8, 99).ok());
    StartServer({"--adapter-dir", adapters});
  }
};

const std::vector<std::string> kVariants = {"",         "demo-000", "demo-001", "demo-002",
                                            "demo-003", "demo-004", "demo-005", "acme/demo-000",
                                            "acme/demo-001"};

TEST_F(AdapterServerTest, ThirtyTwoStreamsOverEightAdaptersAndTheBase) {
  // Solo runs first: each variant on one prompt.
  std::map<std::string, std::vector<int32_t>> solo;
  for (const std::string& variant : kVariants) {
    Stream stream = RunStream(*client_, Generate("the cat reads", 16, variant));
    ASSERT_TRUE(stream.status.ok()) << variant << ": " << stream.status.error_message();
    solo[variant] = stream.tokens;
  }
  for (size_t i = 1; i < kVariants.size(); ++i) {
    EXPECT_NE(solo[kVariants[i]], solo[""]) << kVariants[i] << " generates like the base";
  }
  std::vector<Stream> streams(32);
  std::vector<std::thread> threads;
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&, i] {
      streams[i] = RunStream(*client_, Generate("the cat reads", 16, kVariants[i % kVariants.size()]));
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < 32; ++i) {
    ASSERT_TRUE(streams[i].status.ok()) << streams[i].status.error_message();
    EXPECT_EQ(streams[i].tokens, solo[kVariants[i % kVariants.size()]]) << "stream " << i;
  }
}

TEST_F(AdapterServerTest, ScoreTakesTheVariantAndUnknownOnesAreNotFound) {
  v1::ScoreRequest base_request;
  base_request.set_text("the cat reads a letter");
  v1::ScoreRequest adapter_request = base_request;
  adapter_request.set_variant("acme/demo-001");
  v1::ScoreResponse base, adapted;
  ASSERT_TRUE(client_->Score(base_request, &base).ok());
  ASSERT_TRUE(client_->Score(adapter_request, &adapted).ok());
  EXPECT_NE(base.total_logprob(), adapted.total_logprob());
  Stream missing = RunStream(*client_, Generate("x", 16, "acme/demo-777"));
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(missing.status.error_message().find("acme/demo-777"), std::string::npos);
}

TEST_F(AdapterServerTest, LoraRequestsInfoListsRunningAdapters) {
  const std::string running_series =
      "deltaserve_lora_requests_info{max_lora=\"64\",running_lora_adapters=\"demo-003\",waiting_lora_adapters=\"\"}";
  double while_running = -1;
  int seen = 0;
  std::string running_scrape;
  Stream stream = RunStream(*client_, Generate("the cat", 400, "demo-003"), std::chrono::seconds(30), [&] {
    if (++seen == 3) {
      running_scrape = HttpGet(server_->http_port(), "/metrics");  // the picker's scrape: both families
      while_running = Sample(running_scrape, running_series);
    }
    return seen >= 3;
  });
  EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_GT(while_running, 1.7e9);  // a Unix timestamp
  // The endpoint picker's vLLM-named gauges say the same, in the same scrape.
  EXPECT_EQ(Sample(running_scrape, "vllm:lora_requests_info{max_lora=\"64\",running_lora_adapters=\"demo-003\","
                                   "waiting_lora_adapters=\"\"}"),
            while_running);
  EXPECT_EQ(Sample(running_scrape, "vllm:num_requests_running"), 1);
  EXPECT_EQ(Sample(running_scrape, "vllm:num_requests_running"), Sample(running_scrape, "deltaserve_requests_running"));
  EXPECT_EQ(Sample(running_scrape, "vllm:num_requests_waiting"), Sample(running_scrape, "deltaserve_requests_waiting"));
  EXPECT_GT(Sample(running_scrape, "vllm:kv_cache_usage_perc"), 0);
  EXPECT_EQ(Sample(running_scrape, "vllm:kv_cache_usage_perc"), Sample(running_scrape, "deltaserve_kv_cache_usage_ratio"));
  const std::string idle_series =
      "deltaserve_lora_requests_info{max_lora=\"64\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"}";
  std::string scrape;
  WaitUntil([&] {
    scrape = HttpGet(server_->metrics_port(), "/metrics");
    return Sample(scrape, idle_series) > 0;
  });
  EXPECT_GT(Sample(scrape, idle_series), 1.7e9) << scrape;
  EXPECT_EQ(scrape.find("running_lora_adapters=\"demo-003\""), std::string::npos);  // the old series is gone
}

TEST(AdapterStartupTest, ABrokenAdapterStopsStartupWithItsName) {
  const std::string adapters = MakeTempDir("broken-adapters");
  ASSERT_TRUE(tools::WriteDemoAdapters(TinyModelDir(), adapters, 1, 4).ok());
  std::ofstream(adapters + "/demo-000/adapter_config.json") << "{\"r\": 4, \"target_modules\": [\"q_proj\"]}";
  ServerProcess server;
  EXPECT_FALSE(server.Start(TinyModelDir(), {"--adapter-dir", adapters}));
  EXPECT_NE(server.Log().find("adapter \"demo-000\""), std::string::npos) << server.Log();
  EXPECT_NE(server.Log().find("target_modules does not include"), std::string::npos) << server.Log();
}

TEST(ServerLimitsTest, FullQueueAnswersResourceExhausted) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir(), {"--max-running-requests", "8", "--max-queued-requests", "8"}));
  auto client = DeltaserveClient::Connect(server.target());
  constexpr int kStreams = 64;
  std::vector<Stream> streams(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { streams[i] = RunStream(*client, Generate("the cat", 150)); });
  }
  for (std::thread& thread : threads) thread.join();
  int exhausted = 0, ok = 0;
  for (const Stream& stream : streams) {
    if (stream.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++exhausted;
      EXPECT_NE(stream.status.error_message().find("queue is full"), std::string::npos);
    } else if (stream.status.ok()) {
      ++ok;
      EXPECT_EQ(stream.tokens.size(), 150u);
    }
  }
  // A burst of 64 is admitted up to 8 running plus 8 queued (more only if some end before the
  // last arrive); it admitted 8 to 10 when the queue alone counted.
  EXPECT_GE(ok, 16);
  EXPECT_GE(exhausted, 1);
  EXPECT_EQ(exhausted + ok, kStreams);
}

// The gauges the Gateway API Inference Extension's endpoint picker reads, under vLLM's names, on
// the HTTP API port (the pool's target port, which the picker scrapes): one request runs and two
// wait while the server admits one at a time. The metrics port keeps to deltaserve_ names, and
// --vllm-metrics=false leaves only deltaserve_ families everywhere.
TEST(ServerLimitsTest, VllmNamedGaugesCountRunningAndWaitingRequests) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir(), {"--max-running-requests", "1"}));
  auto client = DeltaserveClient::Connect(server.target());
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&] {
      RunStream(*client, Generate("the cat", 500), std::chrono::seconds(30), [&done] { return done.load(); });
    });
  }
  std::string scrape;
  const bool seen = WaitUntil([&] {
    scrape = HttpGet(server.http_port(), "/metrics");
    return Sample(scrape, "vllm:num_requests_running") == 1 && Sample(scrape, "vllm:num_requests_waiting") == 2;
  });
  done = true;
  for (std::thread& thread : threads) thread.join();
  ASSERT_TRUE(seen) << scrape;
  EXPECT_EQ(Sample(scrape, "deltaserve_requests_waiting"), 2);
  EXPECT_GT(Sample(scrape, "vllm:kv_cache_usage_perc"), 0);
  EXPECT_LE(Sample(scrape, "vllm:kv_cache_usage_perc"), 1);
  EXPECT_NE(scrape.find("# TYPE vllm:lora_requests_info gauge"), std::string::npos);
  const std::string prometheus_scrape = HttpGet(server.metrics_port(), "/metrics");
  EXPECT_NE(prometheus_scrape.find("deltaserve_requests_waiting"), std::string::npos);
  EXPECT_EQ(prometheus_scrape.find("vllm:"), std::string::npos);

  ServerProcess plain;
  ASSERT_TRUE(plain.Start(TinyModelDir(), {"--vllm-metrics=false"}));
  const std::string plain_scrape = HttpGet(plain.http_port(), "/metrics");
  EXPECT_NE(plain_scrape.find("deltaserve_requests_waiting"), std::string::npos);
  EXPECT_EQ(plain_scrape.find("vllm:"), std::string::npos);
}

// `promtool check metrics` (Debian's prometheus package) accepts a live scrape of the metrics
// port after traffic over both APIs, adapters and a job: every family is named, typed, helped
// and unit-suffixed as Prometheus expects. The Grafana dashboard queries only exported families.
TEST_F(AdapterServerTest, PromtoolAcceptsALiveScrape) {
  ASSERT_TRUE(RunStream(*client_, Generate("the baker", 8, "demo-001")).status.ok());
  ASSERT_EQ(HttpCall(server_->http_port(), "POST", "/v1/completions", R"({"prompt": "x", "max_tokens": 2})").status, 200);
  v1::Job job;
  ExpectSucceeds(*client_, SubmitMerge(*client_, Merge("cat", "promtool-merge", {{"demo-000", 1.0}}), &job), job);
  // Every metric the Grafana dashboard (deploy/grafana) queries is a family of the scrape (polled:
  // the job's final metrics may land just after its watchers hear it succeeded).
  std::ifstream dashboard_file(std::string(DELTASERVE_SOURCE_DIR) + "/deploy/grafana/deltaserve.json");
  const std::string dashboard((std::istreambuf_iterator<char>(dashboard_file)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(dashboard.empty());
  std::set<std::string> queried;
  const std::regex metric(R"(deltaserve_[a-z_]+)");
  for (auto it = std::sregex_iterator(dashboard.begin(), dashboard.end(), metric); it != std::sregex_iterator(); ++it) {
    queried.insert(std::regex_replace(it->str(), std::regex("_(bucket|sum|count)$"), ""));
  }
  EXPECT_GE(queried.size(), 15u);
  std::string scrape;
  std::vector<std::string> missing;
  WaitUntil([&] {
    scrape = HttpGet(server_->metrics_port(), "/metrics");
    missing.clear();
    for (const std::string& name : queried) {
      if (scrape.find("# TYPE " + name + " ") == std::string::npos) missing.push_back(name);
    }
    return missing.empty();
  });
  EXPECT_TRUE(missing.empty()) << "not exported: " << missing.front();
  const std::string path = MakeTempDir("promtool") + "/scrape.txt";
  {
    std::ofstream file(path);
    file << scrape;
  }
  FILE* pipe = ::popen(("promtool check metrics < " + path + " 2>&1").c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[512];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  const int status = ::pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_NE(WEXITSTATUS(status), 127) << "promtool is missing: run scripts/setup (Debian's prometheus package)";
  EXPECT_EQ(WEXITSTATUS(status), 0) << output;
}

// A RunStream callback that never cancels and counts its stream into `started` once, at the
// stream's first message: a test that signals once every stream is counted finds them all in the
// engine. (Counting messages would let a few fast streams stand in for calls still queued in
// gRPC, which a shutdown ends CANCELLED: gRPC's doing, not the server's.)
std::function<bool()> CountFirstMessage(std::atomic<int>& started) {
  return [&started, counted = false]() mutable {
    if (!counted) started.fetch_add(1);
    counted = true;
    return false;
  };
}

// SIGTERM with 16 streams in flight, 12 over gRPC and 4 over HTTP: health flips to not serving
// first, new requests get UNAVAILABLE (503 over HTTP), and every stream in flight finishes.
TEST(ServerLifecycleTest, SigtermDrainsInFlightStreams) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir()));
  auto client = DeltaserveClient::Connect(server.target());
  constexpr int kGrpcStreams = 12, kHttpStreams = 4, kTokens = 120;
  std::atomic<int> started{0};
  std::vector<Stream> streams(kGrpcStreams);
  std::vector<HttpReply> http_streams(kHttpStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kGrpcStreams; ++i) {
    threads.emplace_back([&, i] {
      streams[i] = RunStream(*client, Generate("the red fox", kTokens), std::chrono::seconds(60), CountFirstMessage(started));
    });
  }
  for (int i = 0; i < kHttpStreams; ++i) {
    threads.emplace_back([&, i] {
      const nlohmann::json body = {{"prompt", "the red fox"}, {"max_tokens", kTokens}, {"temperature", 0},
                                   {"ignore_eos", true}, {"stream", true}};
      http_streams[i] = HttpCall(server.http_port(), "POST", "/v1/completions", body.dump());
    });
  }
  ASSERT_TRUE(WaitUntil([&] { return started.load() >= kGrpcStreams; }, absl::Seconds(60)));
  server.Signal(SIGTERM);
  // Draining shows as NOT_SERVING (or, once the drain is over, as no server at all).
  EXPECT_TRUE(WaitUntil([&] {
    client::HealthStatus health;
    grpc::Status status = client->Health("", &health);
    return !status.ok() || health == client::HealthStatus::kNotServing;
  }));
  const int http_health = HttpCall(server.http_port(), "GET", "/health").status;
  EXPECT_TRUE(http_health == 503 || http_health == 0) << http_health;
  Stream late = RunStream(*client, Generate("too late", 5), std::chrono::seconds(10));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAVAILABLE) << late.status.error_message();
  for (std::thread& thread : threads) thread.join();
  for (const Stream& stream : streams) {
    ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
    EXPECT_EQ(stream.tokens.size(), static_cast<size_t>(kTokens));
    EXPECT_EQ(stream.responses.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  }
  for (const HttpReply& reply : http_streams) {
    // A stream that had not reached the server before SIGTERM is refused with 503.
    if (reply.status == 503) continue;
    ASSERT_EQ(reply.status, 200) << reply.body;
    std::vector<std::string> events = SseData(reply.body);
    ASSERT_GE(events.size(), 2u) << reply.body;
    EXPECT_EQ(events.back(), "[DONE]");
    EXPECT_EQ(nlohmann::json::parse(events[events.size() - 2])["choices"][0]["finish_reason"], "length") << reply.body;
  }
  EXPECT_EQ(server.WaitForExit(30), 0) << server.Log();
}

// With no grace period, streams still in flight end with a clean UNAVAILABLE, never another error.
TEST(ServerLifecycleTest, StreamsBeyondTheGracePeriodEndUnavailable) {
  ServerProcess server;
  ASSERT_TRUE(server.Start(TinyModelDir(), {"--shutdown-grace-seconds", "0"}));
  auto client = DeltaserveClient::Connect(server.target());
  constexpr int kStreams = 16;
  std::atomic<int> started{0};
  std::vector<Stream> streams(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      streams[i] = RunStream(*client, Generate("the red fox", 400), std::chrono::seconds(60), CountFirstMessage(started));
    });
  }
  ASSERT_TRUE(WaitUntil([&] { return started.load() >= kStreams; }, absl::Seconds(60)));
  server.Signal(SIGTERM);
  for (std::thread& thread : threads) thread.join();
  int unavailable = 0;
  for (const Stream& stream : streams) {
    if (stream.status.ok()) continue;
    EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::UNAVAILABLE) << stream.status.error_message();
    EXPECT_NE(stream.status.error_message().find("shutting down"), std::string::npos) << stream.status.error_message();
    ++unavailable;
  }
  EXPECT_GT(unavailable, 0);
  EXPECT_EQ(server.WaitForExit(30), 0) << server.Log();
}

}  // namespace
}  // namespace deltaserve::testing
