// Test helpers: demo models written once per test process into a temporary directory.
//   const std::string& dir = TinyModelDir();  // LlamaForCausalLM, float32
#pragma once

#include <string>

#include "tools/demo_model.h"

namespace deltaserve::testing {

// A fresh temporary directory ($TMPDIR or /tmp), removed when the process exits unless a test
// failed (then kept, and named on stderr, for inspection) or DELTASERVE_KEEP_TEST_DIRS is set.
std::string MakeTempDir(const std::string& prefix);

// TinyModelDir returns the tiny demo model, written on first use.
const std::string& TinyModelDir();

// WriteModel writes a tiny model variant (reusing the tiny model's tokenizer) and returns its
// directory; aborts the test binary on failure.
std::string WriteModel(const tools::DemoModelOptions& options, const std::string& name);

}  // namespace deltaserve::testing
