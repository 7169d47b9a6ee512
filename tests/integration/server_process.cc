#include "tests/integration/server_process.h"

#include "tests/integration/http_client.h"

#include "tests/support/test_models.h"
#include "tests/support/wait_until.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

namespace deltaserve::testing {

bool ServerProcess::Start(const std::string& model_dir, const std::vector<std::string>& extra_flags) {
  const std::string data_dir = MakeTempDir("deltaserve-data");
  log_path_ = std::string(data_dir) + "/server.log";
  std::vector<std::string> args = {DELTASERVE_SERVER_BINARY, "--model-dir", model_dir,
                                   "--port", "0", "--metrics-port", "0", "--http-port", "0", "--data-dir", data_dir,
                                   "--shutdown-grace-seconds", "20"};
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  int out[2];
  if (::pipe(out) != 0) return false;
  pid_ = ::fork();
  if (pid_ == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(log, STDERR_FILENO);
    ::close(out[0]);
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    std::_Exit(127);
  }
  ::close(out[1]);
  std::string output;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  const std::regex ready(R"(on ([0-9.]+:[0-9]+), metrics on port (-?[0-9]+), http on port (-?[0-9]+))");
  std::smatch match;
  while (std::chrono::steady_clock::now() < give_up) {
    pollfd readable{out[0], POLLIN, 0};
    if (::poll(&readable, 1, 200) <= 0) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;  // exited before serving
        break;
      }
      continue;
    }
    char buffer[512];
    ssize_t n = ::read(out[0], buffer, sizeof(buffer));
    if (n <= 0) break;
    output.append(buffer, static_cast<size_t>(n));
    if (std::regex_search(output, match, ready)) {
      target_ = match[1];
      metrics_port_ = std::stoi(match[2]);
      http_port_ = std::stoi(match[3]);
      ::close(out[0]);
      return true;
    }
  }
  ::close(out[0]);
  std::fprintf(stderr, "server did not start; stdout: %s\nlog:\n%s\n", output.c_str(), Log().c_str());
  return false;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

void ServerProcess::Signal(int signal_number) {
  if (pid_ > 0) ::kill(pid_, signal_number);
}

int ServerProcess::WaitForExit(int timeout_seconds) {
  int status = 0;
  const bool exited = WaitUntil([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; },
                                absl::Seconds(timeout_seconds));
  if (!exited) return -1;
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ServerProcess::Log() const {
  std::ifstream file(log_path_);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

std::string HttpGet(int port, const std::string& path) { return HttpCall(port, "GET", path).body; }

}  // namespace deltaserve::testing
