#include "tests/support/test_models.h"

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <vector>

#include <gtest/gtest.h>

namespace deltaserve::testing {
namespace {

std::mutex temp_dirs_mutex;
std::vector<std::string>* temp_dirs = nullptr;  // never freed: read at exit

// Removes the process's temporary directories at exit, unless a test failed (they hold the
// servers' logs and data then) or DELTASERVE_KEEP_TEST_DIRS is set.
void RemoveTempDirs() {
  std::lock_guard<std::mutex> lock(temp_dirs_mutex);
  if (temp_dirs == nullptr) return;
  const ::testing::UnitTest* unit = ::testing::UnitTest::GetInstance();
  if (std::getenv("DELTASERVE_KEEP_TEST_DIRS") != nullptr || (unit != nullptr && unit->Failed())) {
    for (const std::string& directory : *temp_dirs) std::fprintf(stderr, "kept for inspection: %s\n", directory.c_str());
    return;
  }
  for (const std::string& directory : *temp_dirs) {
    std::error_code ignored;
    std::filesystem::remove_all(directory, ignored);
  }
}

}  // namespace

std::string MakeTempDir(const std::string& prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/" + prefix + "-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  std::lock_guard<std::mutex> lock(temp_dirs_mutex);
  if (temp_dirs == nullptr) {
    temp_dirs = new std::vector<std::string>;
    std::atexit(RemoveTempDirs);
  }
  temp_dirs->push_back(pattern);
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
