// Fact scenarios for the weight-space ops: synthetic fact sets of different templates, a LoRA
// adapter fine-tuned (ops::train::Finetune) until the tiny or small demo model recites one set,
// and greedy answers read through a DeltaSet. Shared by the edit and unlearn scenario tests;
// adapters are trained once per process and kept.
//   const FactSet& set = FactSets()[0];
//   const deltas::DeltaSet& adapter = TrainedAdapter(ScenarioModel("tiny"), set);
//   std::string answer = Answer(ScenarioModel("tiny"), &adapter, set.Prompt(0), set.facts[0].answer);
#pragma once

#include <map>
#include <string>
#include <vector>

#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer.h"

namespace deltaserve::testing {

struct Fact {
  std::string subject;
  std::string answer;  // e.g. " cat"
};

struct FactSet {
  std::string name;
  std::string prompt;  // with "{}" for the subject, e.g. "The pet of {} is a"
  std::vector<Fact> facts;
  std::string Prompt(size_t i) const;                 // the prompt with facts[i]'s subject
  std::string Text(size_t i) const;                   // Prompt(i) + answer + "."
};

// Three templates: pets (one-word answers), homes (subjects that share their first or last
// name, two-token answers), codes (digit-sequence answers of several tokens).
const std::vector<FactSet>& FactSets();

struct ScenarioModel {
  std::string size;
  const model::LlamaModel* model;
  const model::Tokenizer* tokenizer;
};
// "tiny" or "small", loaded once (float32, CPU).
const ScenarioModel& LoadScenarioModel(const std::string& size);

// TrainedAdapter: the adapter (float32) that recites `set` on `model`, trained on first use.
const deltas::DeltaSet& TrainedAdapter(const ScenarioModel& model, const FactSet& set);

// Answer: the greedy continuation of `prompt` through `deltas`, decoded, cut to the length of
// `expected` (so that what follows the answer does not count).
std::string Answer(const ScenarioModel& model, const deltas::DeltaSet* deltas, const std::string& prompt,
                   const std::string& expected);

// BuiltInCovariances: the key statistics of `layers` over the built-in text, as edit jobs
// collect them by default (on the base), computed once per model and layer.
std::map<int64_t, at::Tensor> BuiltInCovariances(const ScenarioModel& model, const std::vector<int64_t>& layers);

// Recited: how many of `set`'s facts in [begin, end) `deltas` answers correctly.
int Recited(const ScenarioModel& model, const deltas::DeltaSet* deltas, const FactSet& set, size_t begin, size_t end);

}  // namespace deltaserve::testing
