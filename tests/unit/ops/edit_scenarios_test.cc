// ops::edit::Edit on facts a model really holds: adapters fine-tuned until the tiny and small
// demo models recite three fact sets (one-word answers; subjects that share first or last
// names with two-token answers; digit codes of several tokens). With default options every
// method (ROME, MEMIT, AlphaEdit) rewrites two strongly memorised facts, stacked on the
// adapter and on an earlier edit; the answers are read by greedy generation through the
// returned deltas, and the other facts keep theirs. An edit that cannot reach its goal within
// its budget is reported as not holding.
#include <chrono>
#include <cstdio>

#include <gtest/gtest.h>

#include "server/ops/edit/edit.h"
#include "tests/unit/ops/fact_scenarios.h"

namespace deltaserve::ops::edit {
namespace {

using testing::Answer;
using testing::FactSet;
using testing::FactSets;
using testing::LoadScenarioModel;
using testing::Recited;
using testing::ScenarioModel;
using testing::TrainedAdapter;

// Probes rewriting facts[i] to facts[j]'s answer for each (i, j), with every fact not edited as
// the neighbourhood.
std::vector<EditProbe> Rewrites(const FactSet& set, const std::vector<std::pair<size_t, size_t>>& rewrites) {
  std::vector<EditProbe> probes;
  for (const auto& [i, j] : rewrites) {
    EditProbe probe{{set.prompt, set.facts[i].subject, set.facts[j].answer}, {}, {}};
    for (size_t k = 0; k < set.facts.size(); ++k) {
      bool edited = false;
      for (const auto& [e, unused] : rewrites) edited |= e == k;
      if (!edited) probe.neighborhood_prompts.push_back(set.Prompt(k));
    }
    probes.push_back(std::move(probe));
  }
  return probes;
}

// The options an edit job uses by default: the layer control::EditLayers picks for a base of
// two or four layers, and key statistics over the built-in text.
EditOptions Defaults(const ScenarioModel& model, EditMethod method) {
  EditOptions options;
  options.method = method;
  options.layers = {0};
  options.mom2_weight = DefaultMom2Weight(method, model.model->config());
  options.covariances = testing::BuiltInCovariances(model, options.layers);
  return options;
}

struct Case {
  std::string model;
  size_t set;
  EditMethod method;
  // The tiny model (two layers, hidden size 64) cannot tell "Anna Berg" from "Cora Berg" at the
  // layer edits read, nor hold a second three-digit code through one value: there the edits
  // must be reported as not holding whenever generation says so; elsewhere they must hold.
  bool holds = true;
};

void PrintTo(const Case& test, std::ostream* out) {
  *out << test.model << " " << FactSets()[test.set].name << " " << EditMethodName(test.method);
}

class EditScenarioTest : public ::testing::TestWithParam<Case> {};

TEST_P(EditScenarioTest, DefaultsRewriteMemorisedFactsAndKeepTheOthers) {
  const Case& test = GetParam();
  const ScenarioModel& model = LoadScenarioModel(test.model);
  const FactSet& set = FactSets()[test.set];
  const deltas::DeltaSet& adapter = TrainedAdapter(model, set);
  ASSERT_EQ(Recited(model, &adapter, set, 0, set.facts.size()), static_cast<int>(set.facts.size()))
      << "the adapter recites its facts";
  const std::vector<std::pair<size_t, size_t>> rewrites = {{0, 2}, {1, 3}};
  const auto started = std::chrono::steady_clock::now();
  auto outcome = Edit(*model.model, *model.tokenizer, &adapter, Rewrites(set, rewrites), Defaults(model, test.method), nullptr);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  int effective = 0;
  for (const auto& [i, j] : rewrites) {
    effective += Answer(model, &outcome->deltas, set.Prompt(i), set.facts[j].answer) == set.facts[j].answer;
  }
  const int kept = Recited(model, &outcome->deltas, set, 2, set.facts.size());
  int64_t steps = 0;
  for (const ValueShift& value : outcome->values) steps += value.steps;
  std::printf("[%s %s %s: efficacy %d/2 (held %ld), locality %d/%zu, rounds %ld, value steps %ld, %.1f s]\n",
              test.model.c_str(), set.name.c_str(), EditMethodName(test.method), effective, outcome->Held(), kept,
              set.facts.size() - 2, outcome->rounds, steps, seconds);
  for (size_t e = 0; e < outcome->values.size(); ++e) {
    std::printf("  edit %zu: margin %.2f nll %.3f steps %ld locality %.2f efficacy %d more-likely %d\n", e,
                outcome->values[e].final_margin, outcome->values[e].final_nll, outcome->values[e].steps,
                outcome->locality[e], outcome->after[e].efficacy ? 1 : 0,
                outcome->after[e].target_log_prob > outcome->after[e].original_log_prob ? 1 : 0);
  }
  if (test.holds) {
    EXPECT_EQ(effective, 2) << "the served answers are the new targets";
    EXPECT_GE(kept, static_cast<int>(set.facts.size()) - 3) << "the facts not edited keep their answers";
    EXPECT_EQ(outcome->Held(), 2);
  }
  for (size_t e = 0; e < rewrites.size(); ++e) {
    const bool served = Answer(model, &outcome->deltas, set.Prompt(rewrites[e].first),
                               set.facts[rewrites[e].second].answer) == set.facts[rewrites[e].second].answer;
    EXPECT_EQ(outcome->after[e].efficacy, served) << "the check agrees with generation";
    if (outcome->holds[e]) {
      EXPECT_TRUE(served) << "an edit that holds is served";
    }
  }
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const char* model : {"tiny", "small"}) {
    for (size_t set = 0; set < FactSets().size(); ++set) {
      for (EditMethod method : {EditMethod::kRome, EditMethod::kMemit, EditMethod::kAlphaEdit}) {
        cases.push_back({model, set, method, std::string(model) == "small" || FactSets()[set].name == "pets"});
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Methods, EditScenarioTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.model + "_" + FactSets()[info.param.set].name + "_" +
                                  EditMethodName(info.param.method);
                         });

TEST(EditStackingTest, AnEditOnAnEarlierEditKeepsBoth) {
  const ScenarioModel& model = LoadScenarioModel("tiny");
  const FactSet& set = FactSets()[0];
  const deltas::DeltaSet& adapter = TrainedAdapter(model, set);
  auto first = Edit(*model.model, *model.tokenizer, &adapter, Rewrites(set, {{0, 2}}), Defaults(model, EditMethod::kRome), nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->Held(), 1);
  EditOptions options = Defaults(model, EditMethod::kMemit);
  auto second = Edit(*model.model, *model.tokenizer, &first->deltas, Rewrites(set, {{1, 4}}), options, nullptr);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->Held(), 1);
  EXPECT_EQ(Answer(model, &second->deltas, set.Prompt(1), set.facts[4].answer), set.facts[4].answer);
  EXPECT_EQ(Answer(model, &second->deltas, set.Prompt(0), set.facts[2].answer), set.facts[2].answer)
      << "the earlier edit survives";
  EXPECT_GE(Recited(model, &second->deltas, set, 2, set.facts.size()), 5);
}

TEST(EditVerificationTest, AnEditThatMissesItsGoalDoesNotHold) {
  const ScenarioModel& model = LoadScenarioModel("tiny");
  const FactSet& set = FactSets()[0];
  const deltas::DeltaSet& adapter = TrainedAdapter(model, set);
  EditOptions options = Defaults(model, EditMethod::kMemit);
  options.value.steps = 1;  // one step of value optimisation and no repair: far from the margin
  options.repair_rounds = 0;
  auto outcome = Edit(*model.model, *model.tokenizer, &adapter, Rewrites(set, {{0, 2}, {1, 3}}), options, nullptr);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(outcome->rounds, 1);
  for (size_t e = 0; e < 2; ++e) {
    EXPECT_FALSE(outcome->values[e].reached);
    const bool answered = Answer(model, &outcome->deltas, set.Prompt(e), set.facts[e + 2].answer) == set.facts[e + 2].answer;
    EXPECT_EQ(outcome->holds[e], answered);
  }
  EXPECT_LT(outcome->Held(), 2);
}

}  // namespace
}  // namespace deltaserve::ops::edit
