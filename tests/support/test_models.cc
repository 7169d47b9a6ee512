#include "tests/support/test_models.h"

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>

namespace deltaserve::testing {

std::string MakeTempDir(const std::string& prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/" + prefix + "-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  return pattern;
}

const std::string& TinyModelDir() {
  // Written by the real tool in a child process: SentencePiece's trainer logs to std::cerr, which
  // a test binary (through gtest) copy-relocates; inside the DEEPBIND shim that stream would be
  // an unconstructed copy (see server/model/sentencepiece_shim_api.h).
  static const std::string* directory = [] {
    auto* path = new std::string(MakeTempDir("deltaserve-tiny"));
    std::string command = std::string(DELTASERVE_MAKE_DEMO_BINARY) + " --size tiny --out " + *path +
                          " > " + *path + "/make-demo.log 2>&1";
    if (std::system(command.c_str()) != 0) {
      std::fprintf(stderr, "cannot write the tiny demo model: %s failed\n", command.c_str());
      std::abort();
    }
    return path;
  }();
  return *directory;
}

std::string WriteModel(const tools::DemoModelOptions& options, const std::string& name) {
  tools::DemoModelOptions with_tokenizer = options;
  if (with_tokenizer.tokenizer_from.empty()) with_tokenizer.tokenizer_from = TinyModelDir();
  std::string directory = MakeTempDir("deltaserve-" + name);
  absl::Status status = tools::WriteDemoModel(directory, with_tokenizer);
  if (!status.ok()) {
    std::fprintf(stderr, "cannot write model %s: %s\n", name.c_str(), status.ToString().c_str());
    std::abort();
  }
  return directory;
}

}  // namespace deltaserve::testing
