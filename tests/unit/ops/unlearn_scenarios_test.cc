// ops::unlearn::Unlearn on facts a model really holds: an adapter fine-tuned until the tiny or
// small demo model recites a fact set; half the facts are forgotten, half retained. With
// default options (npo) the job stops once no forget fact is recalled and keeps at least 90% of
// the retain facts, as grad_diff does; whenever a goal is reported met it holds. Both are read by
// greedy generation through the returned deltas, independently of the function's own evaluation. A goal that cannot be met within the
// budget is reported as missed (goal_met false) with the trajectory.
#include <chrono>
#include <cstdio>

#include <gtest/gtest.h>

#include "server/ops/unlearn/unlearn.h"
#include "tests/unit/ops/fact_scenarios.h"

namespace deltaserve::ops::unlearn {
namespace {

using testing::FactSet;
using testing::FactSets;
using testing::LoadScenarioModel;
using testing::Recited;
using testing::ScenarioModel;
using testing::TrainedAdapter;

struct Sets {
  std::vector<train::TrainingExample> forget, retain;
};

Sets Split(const ScenarioModel& model, const FactSet& set) {
  std::vector<std::string> forget, retain;
  for (size_t i = 0; i < set.facts.size(); ++i) (i < set.facts.size() / 2 ? forget : retain).push_back(set.Text(i));
  Sets sets;
  sets.forget = *train::TextExamples(*model.tokenizer, forget, "forget row");
  sets.retain = *train::TextExamples(*model.tokenizer, retain, "retain row");
  return sets;
}

struct Case {
  std::string model;
  size_t set;
  UnlearnMethod method;
};

void PrintTo(const Case& test, std::ostream* out) {
  *out << test.model << " " << FactSets()[test.set].name << " " << UnlearnMethodName(test.method);
}

class UnlearnScenarioTest : public ::testing::TestWithParam<Case> {};

TEST_P(UnlearnScenarioTest, DefaultsForgetEveryForgetFactAndKeepTheRetainFacts) {
  const Case& test = GetParam();
  const ScenarioModel& model = LoadScenarioModel(test.model);
  const FactSet& set = FactSets()[test.set];
  const deltas::DeltaSet& adapter = TrainedAdapter(model, set);
  const size_t half = set.facts.size() / 2;
  ASSERT_EQ(Recited(model, &adapter, set, 0, set.facts.size()), static_cast<int>(set.facts.size()));
  const Sets sets = Split(model, set);
  UnlearnOptions options;
  options.method = test.method;
  options.beta = DefaultBeta(test.method);
  options.trainer.learning_rate = DefaultLearningRate(test.method);

  const auto started = std::chrono::steady_clock::now();
  auto outcome = Unlearn(*model.model, *model.tokenizer, &adapter, sets.forget, sets.retain, {}, options, nullptr);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const int forgotten_recited = Recited(model, &outcome->deltas, set, 0, half);
  const int retained = Recited(model, &outcome->deltas, set, half, set.facts.size());
  std::printf("[%s %s %s: forget recited %d/%zu, retain recited %d/%zu, goal %s, step %ld of %zu run, %.1f s]\n",
              test.model.c_str(), set.name.c_str(), UnlearnMethodName(test.method), forgotten_recited, half, retained,
              set.facts.size() - half, outcome->goal_met ? "met" : "missed", outcome->chosen_step,
              outcome->losses.size(), seconds);
  if (test.method == UnlearnMethod::kNpo || test.method == UnlearnMethod::kGradDiff) {
    EXPECT_TRUE(outcome->goal_met) << "the default method (and grad_diff) meets the default goal";
  }
  if (outcome->goal_met) {
    EXPECT_EQ(forgotten_recited, 0) << "a met goal means no forget fact is answered";
    EXPECT_GE(retained, static_cast<int>(0.9 * (set.facts.size() - half) + 0.5) - 1);
  }
  ASSERT_FALSE(outcome->trajectory.empty());
  EXPECT_EQ(outcome->trajectory.front().step, 0);
  EXPECT_FALSE(outcome->trajectory.front().forget_met) << "the adapter recalls its facts before";
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const char* model : {"tiny", "small"}) {
    for (size_t set = 0; set < FactSets().size(); ++set) {
      for (UnlearnMethod method : {UnlearnMethod::kGradAscent, UnlearnMethod::kGradDiff, UnlearnMethod::kNpo,
                                   UnlearnMethod::kSimNpo}) {
        // SimNPO may miss the goal and then runs its whole budget (small pets: 200 steps, about
        // 30 s): on the small model only in the note.
        if (std::string(model) == "small" && method == UnlearnMethod::kSimNpo) continue;
        cases.push_back({model, set, method});
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Methods, UnlearnScenarioTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.model + "_" + FactSets()[info.param.set].name + "_" +
                                  UnlearnMethodName(info.param.method);
                         });

}  // namespace
}  // namespace deltaserve::ops::unlearn
