// The tiny demo model (float32 on the CPU) and its tokenizer, loaded on first use and shared by
// the tests of one binary (never freed: tests read them until the process ends).
//   auto edit = RomeEdit(TinyModel(), TinyTokenizer(), nullptr, spec, options, at::Tensor());
#pragma once

#include "server/model/llama_model.h"
#include "server/model/tokenizer_loader.h"
#include "tests/support/test_models.h"

namespace deltaserve::testing {

inline const model::LlamaModel& TinyModel() {
  static const model::LlamaModel* tiny = model::LlamaModel::Load(TinyModelDir(), model::ModelOptions())->release();
  return *tiny;
}

inline const model::Tokenizer& TinyTokenizer() {
  static const model::Tokenizer* tokenizer = model::LoadTokenizer(TinyModelDir(), TinyModel().config())->release();
  return *tokenizer;
}

}  // namespace deltaserve::testing
