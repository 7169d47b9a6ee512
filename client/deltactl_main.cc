// deltactl: command-line client for deltaserve.
//   deltactl generate --target host:port [--variant V] [--max-tokens N] [--temperature T]
//                     [--seed S] [--stop S] "prompt"      streams the text to stdout
//   deltactl score --target host:port "text"             prints per-token log-probabilities
//   deltactl tokenize --target host:port "text"          prints token ids and pieces
//   deltactl health --target host:port                   SERVING / NOT_SERVING (exit 0 / 1)
//   deltactl variants list|get|register|upload|delete|pin|unpin ...   (see deltactl_variants.h)
//   deltactl jobs merge|finetune|unlearn|edit|stats|get|list|watch|cancel ...  (see deltactl_jobs.h)
//   deltactl datasets upload|list|get|delete ...                      (see deltactl_datasets.h)
//   deltactl keys hash [KEY]      the SHA-256 digest a --config tenant's api_key_sha256 holds
//                                 (KEY read from standard input when not given, so it stays
//                                 out of the shell history)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "client/deltactl_datasets.h"
#include "client/deltactl_files.h"
#include "client/deltactl_jobs.h"
#include "client/deltactl_report.h"
#include "client/deltactl_variants.h"
#include "client/deltaserve_client.h"
#include "server/common/flag_names.h"
#include "server/common/sha256.h"

ABSL_FLAG(std::string, target, "",
          "server address host:port (default 127.0.0.1:50051); in `jobs edit` it is the edit's new completion "
          "instead, and the address is --server");
ABSL_FLAG(std::string, server, "", "server address host:port; wins over --target (needed with `jobs edit`)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA to trust: connect over TLS");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate for mutual TLS (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, api_key, "", "API key sent as \"authorization: Bearer KEY\" (default: $DELTASERVE_API_KEY)");
ABSL_FLAG(std::string, variant, "", "variant name (empty = base model)");
ABSL_FLAG(int32_t, max_tokens, 0, "tokens to generate (0 = server default)");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature (0 = greedy)");
ABSL_FLAG(int32_t, top_k, 0, "top-k (0 = off)");
ABSL_FLAG(double, top_p, 1.0, "top-p (1 = off)");
ABSL_FLAG(int64_t, seed, -1, "sampling seed (-1 = random)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings, comma-separated");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past end-of-sequence");
ABSL_FLAG(bool, logprobs, false, "print per-token log-probabilities to stderr");
ABSL_FLAG(double, timeout, 0, "deadline in seconds (0 = none)");
ABSL_FLAG(std::string, progress, "auto",
          "progress bars on stderr for uploads and followed jobs: auto (when stderr is a terminal), always, never");
ABSL_FLAG(bool, stats, true, "print finish reason and usage to stderr after generate");

namespace {

using deltaserve::client::DeltaserveClient;
namespace v1 = deltaserve::v1;

const char* FinishName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_CANCELLED: return "cancelled";
    case v1::FINISH_REASON_DEADLINE_EXCEEDED: return "deadline_exceeded";
    case v1::FINISH_REASON_ERROR: return "error";
    default: return "unspecified";
  }
}

std::chrono::milliseconds Timeout() {
  return std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout) * 1000));
}

int Generate(DeltaserveClient& client, const std::string& prompt) {
  v1::GenerateRequest request;
  request.set_variant(absl::GetFlag(FLAGS_variant));
  request.set_prompt(prompt);
  v1::SamplingParams* sampling = request.mutable_sampling();
  sampling->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  sampling->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  sampling->set_top_k(absl::GetFlag(FLAGS_top_k));
  sampling->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    sampling->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
    sampling->set_has_seed(true);
  }
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) sampling->add_stop(stop);
  sampling->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  request.set_include_logprobs(absl::GetFlag(FLAGS_logprobs));
  v1::GenerateResponse last;
  grpc::Status status = client.Generate(
      request,
      [&last](const v1::GenerateResponse& response) {
        std::fwrite(response.text().data(), 1, response.text().size(), stdout);
        std::fflush(stdout);
        for (int i = 0; i < response.logprobs_size(); ++i) {
          std::fprintf(stderr, "[token %d logprob %.4f]\n", response.token_ids(i), response.logprobs(i));
        }
        last = response;
      },
      Timeout());
  std::printf("\n");
  std::fflush(stdout);
  if (status.ok() && absl::GetFlag(FLAGS_stats)) {
    std::fprintf(stderr, "[finish: %s, prompt %d tokens, generated %d tokens, first token after %.3f s]\n",
                 FinishName(last.finish_reason()), last.usage().prompt_tokens(),
                 last.usage().completion_tokens(), last.usage().time_to_first_token_seconds());
  }
  return deltaserve::client::ReportStatus(client, status);
}

int Score(DeltaserveClient& client, const std::string& text) {
  v1::ScoreRequest request;
  request.set_variant(absl::GetFlag(FLAGS_variant));
  request.set_text(text);
  v1::ScoreResponse response;
  grpc::Status status = client.Score(request, &response, Timeout());
  if (status.ok()) {
    for (int i = 0; i < response.token_ids_size(); ++i) {
      if (i == 0) std::printf("%d\t-\n", response.token_ids(i));
      else std::printf("%d\t%.6f\n", response.token_ids(i), response.token_logprobs(i - 1));
    }
    std::printf("total_logprob\t%.6f\n", response.total_logprob());
  }
  return deltaserve::client::ReportStatus(client, status);
}

int Tokenize(DeltaserveClient& client, const std::string& text) {
  v1::TokenizeRequest request;
  request.set_text(text);
  request.set_add_special_tokens(true);
  v1::TokenizeResponse response;
  grpc::Status status = client.Tokenize(request, &response);
  if (status.ok()) {
    for (int i = 0; i < response.token_ids_size(); ++i) {
      std::printf("%d\t\"%s\"\n", response.token_ids(i), response.tokens(i).c_str());
    }
  }
  return deltaserve::client::ReportStatus(client, status);
}

int HashKey(const std::vector<char*>& positional) {
  if (positional.size() < 3 || std::string(positional[2]) != "hash" || positional.size() > 4) {
    std::fprintf(stderr, "usage: deltactl keys hash [KEY]   (KEY from standard input when not given)\n");
    return 2;
  }
  std::string key;
  if (positional.size() == 4) {
    key = positional[3];
  } else if (!std::getline(std::cin, key)) {
    std::fprintf(stderr, "deltactl: no key on standard input\n");
    return 2;
  }
  if (key.empty()) {
    std::fprintf(stderr, "deltactl: the key is empty\n");
    return 2;
  }
  std::printf("%s\n", deltaserve::common::Sha256Hex(key).c_str());
  return 0;
}

int Health(DeltaserveClient& client) {
  deltaserve::client::HealthStatus health;
  grpc::Status status = client.Health("", &health);
  if (!status.ok()) return deltaserve::client::ReportStatus(client, status);
  bool serving = health == deltaserve::client::HealthStatus::kServing;
  std::printf("%s\n", serving ? "SERVING" : "NOT_SERVING");
  return serving ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "deltactl generate|score|tokenize|health|variants|jobs|datasets|keys --target host:port [flags] [text]");
  std::vector<std::string> storage;
  std::vector<char*> arguments = deltaserve::common::NormalizeFlagNames(argc, argv, storage);
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(arguments.size()), arguments.data());
  if (positional.size() < 2) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const std::string command = positional[1];
  std::string text;
  for (size_t i = 2; i < positional.size(); ++i) {
    if (!text.empty()) text += " ";
    text += positional[i];
  }
  if (command == "keys") return HashKey(positional);
  deltaserve::client::ConnectOptions options;
  options.api_key = absl::GetFlag(FLAGS_api_key);
  if (const char* from_environment = std::getenv("DELTASERVE_API_KEY");
      options.api_key.empty() && from_environment != nullptr) {
    options.api_key = from_environment;
  }
  for (const auto& [path, pem] : {std::pair{absl::GetFlag(FLAGS_tls_ca), &options.tls_ca_pem},
                                  std::pair{absl::GetFlag(FLAGS_tls_cert), &options.tls_cert_pem},
                                  std::pair{absl::GetFlag(FLAGS_tls_key), &options.tls_key_pem}}) {
    if (path.empty()) continue;
    if (!deltaserve::client::ReadWholeFile(path, pem)) {
      std::fprintf(stderr, "deltactl: cannot read %s\n", path.c_str());
      return 2;
    }
  }
  if (options.tls_ca_pem.empty() && !options.tls_cert_pem.empty()) {
    std::fprintf(stderr, "deltactl: --tls-cert needs --tls-ca (the CA that signed the server's certificate)\n");
    return 2;
  }
  // `jobs edit --target " Paris"` names the fact's target, as knowledge-editing tools do.
  const bool target_is_edit = command == "jobs" && positional.size() > 2 && std::string(positional[2]) == "edit";
  std::string address = absl::GetFlag(FLAGS_server);
  if (address.empty() && !target_is_edit) address = absl::GetFlag(FLAGS_target);
  if (address.empty()) address = "127.0.0.1:50051";
  auto client = DeltaserveClient::Connect(address, options);
  if (command == "health") return Health(*client);
  if (command == "variants") {
    return deltaserve::client::RunVariantsCommand(
        *client, std::vector<std::string>(positional.begin() + 2, positional.end()));
  }
  if (command == "jobs") {
    return deltaserve::client::RunJobsCommand(
        *client, std::vector<std::string>(positional.begin() + 2, positional.end()));
  }
  if (command == "datasets") {
    return deltaserve::client::RunDatasetsCommand(
        *client, std::vector<std::string>(positional.begin() + 2, positional.end()));
  }
  if (text.empty() && command != "health") {
    std::fprintf(stderr, "deltactl %s: give the text as the last argument\n", command.c_str());
    return 2;
  }
  if (command == "generate") return Generate(*client, text);
  if (command == "score") return Score(*client, text);
  if (command == "tokenize") return Tokenize(*client, text);
  std::fprintf(stderr, "deltactl: unknown command \"%s\" (generate, score, tokenize, health, variants, jobs, datasets)\n",
               command.c_str());
  return 2;
}
