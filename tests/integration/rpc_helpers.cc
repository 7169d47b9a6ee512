#include "tests/integration/rpc_helpers.h"

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tests/support/test_models.h"

namespace deltaserve::testing {

v1::GenerateRequest Generate(const std::string& prompt, int max_tokens, const std::string& variant) {
  v1::GenerateRequest request;
  request.set_variant(variant);
  request.set_prompt(prompt);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

Stream RunStream(DeltaserveClient& client, const v1::GenerateRequest& request,
                 std::chrono::milliseconds timeout, const std::function<bool()>& cancel) {
  Stream stream;
  stream.status = client.Generate(
      request,
      [&stream](const v1::GenerateResponse& response) {
        stream.responses.push_back(response);
        stream.text += response.text();
        stream.tokens.insert(stream.tokens.end(), response.token_ids().begin(), response.token_ids().end());
      },
      timeout, cancel);
  return stream;
}

double Sample(const std::string& scrape, const std::string& name_and_labels) {
  std::istringstream lines(scrape);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(name_and_labels + " ", 0) == 0) return std::stod(line.substr(name_and_labels.size() + 1));
  }
  return -1;
}

int RunDeltactl(const std::string& arguments, std::string* out, std::string* err) {
  const std::string directory = MakeTempDir("deltactl");
  const std::string command = std::string(DELTACTL_BINARY) + " " + arguments + " > " + directory +
                              "/out 2> " + directory + "/err";
  int status = std::system(command.c_str());
  auto read = [&](const char* name) {
    std::ifstream file(directory + "/" + name);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
  };
  *out = read("out");
  *err = read("err");
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace deltaserve::testing
