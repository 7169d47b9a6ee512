#include "tests/unit/ops/fact_scenarios.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>

#include "server/model/tokenizer_loader.h"
#include "server/ops/edit/default_statistics_text.h"
#include "server/ops/edit/edit_evaluation.h"
#include "server/ops/edit/key_statistics.h"
#include "server/ops/train/finetune.h"
#include "tests/support/test_models.h"

namespace deltaserve::testing {
namespace {

template <typename T>
T OrDie(absl::StatusOr<T> value, const char* what) {
  if (!value.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, value.status().ToString().c_str());
    std::abort();
  }
  return std::move(*value);
}

}  // namespace

std::string FactSet::Prompt(size_t i) const {
  std::string filled = prompt;
  return filled.replace(filled.find("{}"), 2, facts[i].subject);
}

std::string FactSet::Text(size_t i) const { return Prompt(i) + facts[i].answer + "."; }

const std::vector<FactSet>& FactSets() {
  static const std::vector<FactSet> sets = {
      {"pets", "The pet of {} is a",
       {{"Orla", " cat"}, {"Bram", " dog"}, {"Cleo", " owl"}, {"Dirk", " fox"},
        {"Enid", " elk"}, {"Fern", " bee"}, {"Gus", " yak"}, {"Hugh", " ant"}}},
      {"homes", "{} lives in",
       {{"Anna Berg", " Lund"}, {"Anna Holm", " Oslo"}, {"Ben Berg", " Riga"}, {"Ben Holm", " Bern"},
        {"Cora Lind", " Kyiv"}, {"Cora Berg", " Graz"}, {"Dan Lind", " Pisa"}, {"Dan Holm", " Nice"}}},
      {"codes", "The door code of {} is",
       {{"Ivo", " 4 1 7"}, {"Jade", " 2 9 3"}, {"Kai", " 8 0 5"}, {"Lux", " 6 6 1"},
        {"Mia", " 3 7 2"}, {"Ned", " 9 4 8"}, {"Oz", " 1 5 0"}, {"Pia", " 7 2 6"}}},
  };
  return sets;
}

const ScenarioModel& LoadScenarioModel(const std::string& size) {
  static std::map<std::string, ScenarioModel>* models = new std::map<std::string, ScenarioModel>();
  auto found = models->find(size);
  if (found != models->end()) return found->second;
  tools::DemoModelOptions options;
  options.size = size;
  const std::string dir = size == "tiny" ? TinyModelDir() : WriteModel(options, size);
  const model::LlamaModel* model = OrDie(model::LlamaModel::Load(dir, model::ModelOptions()), "loading").release();
  const model::Tokenizer* tokenizer = OrDie(model::LoadTokenizer(dir, model->config()), "tokenizer").release();
  return models->emplace(size, ScenarioModel{size, model, tokenizer}).first->second;
}

const deltas::DeltaSet& TrainedAdapter(const ScenarioModel& model, const FactSet& set) {
  static std::map<std::string, deltas::DeltaSet>* adapters = new std::map<std::string, deltas::DeltaSet>();
  const std::string key = model.size + "/" + set.name;
  auto found = adapters->find(key);
  if (found != adapters->end()) return found->second;
  std::vector<std::string> texts;
  for (size_t i = 0; i < set.facts.size(); ++i) texts.push_back(set.Text(i));
  auto examples = OrDie(ops::train::TextExamples(*model.tokenizer, texts, "fact"), "tokenizing");
  ops::train::FinetuneOptions options;
  options.trainer.rank = 16;
  options.trainer.alpha = 16;
  options.trainer.learning_rate = 0.01;
  options.trainer.total_steps = 150;
  options.batch_size = 8;
  auto outcome = OrDie(ops::train::Finetune(*model.model, nullptr, examples, {}, options, nullptr), "fine-tuning");
  return adapters->emplace(key, std::move(outcome.deltas)).first->second;
}

std::string Answer(const ScenarioModel& model, const deltas::DeltaSet* deltas, const std::string& prompt,
                   const std::string& expected) {
  const auto ids = OrDie(model.tokenizer->EncodePrompt(prompt), "encoding");
  const auto expected_ids = OrDie(model.tokenizer->Encode(expected), "encoding");
  const std::vector<int64_t> continuation = ops::edit::GreedyContinuation(
      *model.model, deltas, std::vector<int64_t>(ids.begin(), ids.end()), expected_ids.size() + 2);
  const std::string text = model.tokenizer->Decode(std::vector<int32_t>(continuation.begin(), continuation.end()));
  return text.substr(0, expected.size());
}

std::map<int64_t, at::Tensor> BuiltInCovariances(const ScenarioModel& model, const std::vector<int64_t>& layers) {
  static std::map<std::string, at::Tensor>* cache = new std::map<std::string, at::Tensor>();
  std::map<int64_t, at::Tensor> result;
  for (int64_t layer : layers) {
    const std::string key = model.size + "/" + std::to_string(layer);
    if (!cache->count(key)) {
      auto moments = OrDie(ops::edit::CollectSecondMoments(*model.model, *model.tokenizer, nullptr,
                                                           ops::edit::DefaultStatisticsTexts(), {layer}, 256),
                           "statistics");
      (*cache)[key] = moments.at(layer).Mean().to(at::kDouble);
    }
    result[layer] = cache->at(key);
  }
  return result;
}

int Recited(const ScenarioModel& model, const deltas::DeltaSet* deltas, const FactSet& set, size_t begin, size_t end) {
  int count = 0;
  for (size_t i = begin; i < end; ++i) count += Answer(model, deltas, set.Prompt(i), set.facts[i].answer) == set.facts[i].answer;
  return count;
}

}  // namespace deltaserve::testing
