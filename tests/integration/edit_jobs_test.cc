// Integration: knowledge-edit jobs on the real server. A LoRA adapter is fine-tuned until it
// recites synthetic facts; ROME and MEMIT edits stacked on it are published as EDIT variants
// whose lineage holds the edits and whose evaluation compares before and after; the served
// variant answers the edited prompts with the new targets (checked by generation, independently
// of the job's own evaluation) and the facts not edited as before. Statistics jobs fill a cache
// that later jobs reuse; bad requests are refused with what to fix; deltactl drives it.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server/common/file_util.h"
#include "tests/integration/rpc_helpers.h"
#include "tests/integration/shared_server.h"
#include "tests/support/test_models.h"

namespace deltaserve::testing {
namespace {

// Synthetic facts the tiny model cannot know: "The pet of NAME is a ANIMAL." The tiny model's
// tokenizer spells names letter by letter and its two layers see little of a name beyond its
// last letter, where edits read the subject's key: each name ends in its own letter.
const std::vector<std::pair<std::string, std::string>> kFacts = {
    {"Orla", " cat"}, {"Bram", " dog"}, {"Cleo", " owl"}, {"Dirk", " fox"},
    {"Enid", " elk"}, {"Fern", " bee"}, {"Gus", " yak"},  {"Hugh", " ant"}};
constexpr const char* kPrompt = "The pet of {} is a";

std::string Prompt(const std::string& subject) {
  std::string prompt = kPrompt;
  return prompt.replace(prompt.find("{}"), 2, subject);
}

// Answers: the greedy continuation of `subject`'s prompt, as many bytes as `expected`.
std::string Answer(DeltaserveClient& client, const std::string& variant, const std::string& subject,
                   const std::string& expected) {
  Stream stream = RunStream(client, Generate(Prompt(subject), 6, variant));
  EXPECT_TRUE(stream.status.ok()) << stream.status.error_message();
  return stream.text.substr(0, expected.size());
}

// The suites' shared steps; each suite has its own server.
template <typename Suite>
class EditJobsFixture : public SharedServerTest<Suite> {
 protected:
  using SharedServerTest<Suite>::client_;

  // The facts adapter, fine-tuned once per server.
  static void TrainFacts() {
    if (trained_) return;
    v1::FinetuneRequest request;
    request.set_output("facts/pets");
    for (const auto& [subject, animal] : kFacts) request.add_texts(Prompt(subject) + animal + ".");
    request.set_rank(16);
    request.set_steps(150);
    request.set_learning_rate(0.01f);
    v1::Job job;
    ExpectSucceeds(*client_, SubmitFinetune(*client_, request, &job), job);
    trained_ = true;
  }

  static v1::EditRequest Edit(const std::string& method, const std::string& output,
                              const std::vector<std::pair<std::string, std::string>>& facts) {
    v1::EditRequest request;
    request.set_parent("facts/pets");
    request.set_output(output);
    request.set_method(method);
    for (const auto& [subject, target] : facts) {
      v1::EditSpec* edit = request.add_edits();
      edit->set_prompt(kPrompt);
      edit->set_subject(subject);
      edit->set_target(target);
      edit->add_paraphrases("Everyone knows that the pet of {} is a");
      for (const auto& [other, animal] : kFacts) {
        bool edited = false;
        for (const auto& [subject_edited, unused] : facts) edited |= other == subject_edited;
        if (!edited) edit->add_neighborhood_prompts(Prompt(other));
      }
    }
    return request;
  }

  static inline bool trained_ = false;
};

class EditJobsTest : public EditJobsFixture<EditJobsTest> {
 protected:
  static void SetUpTestSuite() { StartServer(); }
};

// The base's weights kept in int8 (--weight-dtype int8): the fine-tune and the edit compute over
// the base as it is served.
class EditJobsOnAnInt8BaseTest : public EditJobsFixture<EditJobsOnAnInt8BaseTest> {
 protected:
  static void SetUpTestSuite() { StartServer({"--weight-dtype", "int8"}); }
};

nlohmann::json Evaluation(const v1::Variant& variant) { return nlohmann::json::parse(variant.evaluation_json()); }

TEST_F(EditJobsTest, RomeEditsStackOnTheFactsAdapterAndAnAlphaEditOnTopKeepsThem) {
  TrainFacts();
  for (const auto& [subject, animal] : kFacts) ASSERT_EQ(Answer(*client_, "facts/pets", subject, animal), animal);
  const std::vector<std::pair<std::string, std::string>> edits = {{"Orla", " owl"}, {"Bram", " fox"}};
  v1::Job job;
  v1::Job done = ExpectSucceeds(*client_, SubmitEdit(*client_, Edit("rome", "facts/pets-rome", edits), &job), job);
  EXPECT_EQ(done.kind(), v1::EDIT_JOB);
  ASSERT_EQ(done.edit().layers_size(), 1);
  EXPECT_EQ(done.edit().layers(0), 0) << "the default layer of a two-layer base";

  // Served: the new facts, and the facts not edited unchanged.
  for (const auto& [subject, target] : edits) EXPECT_EQ(Answer(*client_, "facts/pets-rome", subject, target), target);
  int kept = 0;
  for (size_t i = 2; i < kFacts.size(); ++i) {
    kept += Answer(*client_, "facts/pets-rome", kFacts[i].first, kFacts[i].second) == kFacts[i].second ? 1 : 0;
  }
  EXPECT_GE(kept, 5) << "the adapter's other facts survive the edit";

  v1::Variant variant;
  ASSERT_TRUE(GetVariant(*client_, "facts/pets-rome", &variant).ok());
  EXPECT_EQ(variant.kind(), v1::EDIT);
  ASSERT_EQ(variant.lineage().parents_size(), 1);
  EXPECT_EQ(variant.lineage().parents(0), "facts/pets");
  const nlohmann::json recipe = nlohmann::json::parse(variant.lineage().recipe_json());
  ASSERT_EQ(recipe["edits"].size(), 2u);
  EXPECT_EQ(recipe["edits"][0]["subject"], "Orla");
  EXPECT_EQ(recipe["edits"][0]["target"], " owl");
  const nlohmann::json evaluation = Evaluation(variant);
  std::printf("[ROME job on the facts adapter: %s]\n", evaluation["mean"].dump().c_str());
  EXPECT_EQ(evaluation["mean"]["efficacy_before"], 0.0);
  EXPECT_GE(evaluation["mean"]["efficacy_after"].get<double>(), 0.95);
  EXPECT_GE(evaluation["mean"]["efficacy_score_after"].get<double>(), 0.95);
  EXPECT_GE(evaluation["mean"]["locality"].get<double>(), 0.9);
  EXPECT_TRUE(evaluation["mean"].contains("generalisation_after"));
  EXPECT_TRUE(evaluation["mean"].contains("fluency_after"));
  EXPECT_EQ(evaluation["edits"][0]["original_answer"].get<std::string>().substr(0, 4), " cat");

  // AlphaEdit on top: its update avoids the keys of the lineage's earlier edits (Orla, Bram),
  // which keep their new answers, and of the preserved knowledge.
  v1::EditRequest alpha = Edit("alphaedit", "facts/pets-alpha", {{"Cleo", " cat"}});
  alpha.set_parent("facts/pets-rome");
  v1::Job alpha_done = ExpectSucceeds(*client_, SubmitEdit(*client_, alpha, &job), job);
  EXPECT_EQ(alpha_done.edit().method(), "alphaedit");
  EXPECT_EQ(Answer(*client_, "facts/pets-alpha", "Cleo", " cat"), " cat");
  for (const auto& [subject, target] : edits) EXPECT_EQ(Answer(*client_, "facts/pets-alpha", subject, target), target);
  ASSERT_TRUE(GetVariant(*client_, "facts/pets-alpha", &variant).ok());
  std::printf("[AlphaEdit job on the ROME variant: %s]\n", Evaluation(variant)["mean"].dump().c_str());
  EXPECT_EQ(variant.lineage().parents(0), "facts/pets-rome");
  EXPECT_GE(Evaluation(variant)["mean"]["efficacy_after"].get<double>(), 0.95);
}

TEST_F(EditJobsOnAnInt8BaseTest, ARomeEditOnTheFactsAdapterServes) {
  TrainFacts();
  for (const auto& [subject, animal] : kFacts) ASSERT_EQ(Answer(*client_, "facts/pets", subject, animal), animal);
  v1::Job job;
  ExpectSucceeds(*client_, SubmitEdit(*client_, Edit("rome", "facts/pets-rome", {{"Orla", " owl"}}), &job), job);
  EXPECT_EQ(Answer(*client_, "facts/pets-rome", "Orla", " owl"), " owl");
  int kept = 0;
  for (size_t i = 1; i < kFacts.size(); ++i) {
    kept += Answer(*client_, "facts/pets-rome", kFacts[i].first, kFacts[i].second) == kFacts[i].second ? 1 : 0;
  }
  EXPECT_GE(kept, 6) << "the adapter's other facts survive the edit";
  v1::Variant variant;
  ASSERT_TRUE(GetVariant(*client_, "facts/pets-rome", &variant).ok());
  EXPECT_GE(Evaluation(variant)["mean"]["efficacy_after"].get<double>(), 0.95);
}

TEST_F(EditJobsTest, AnEditThatDoesNotHoldFailsAndPublishesNothing) {
  TrainFacts();
  // One step of value optimisation and no repair round cannot overturn a memorised answer.
  const std::vector<std::pair<std::string, std::string>> edits = {{"Orla", " owl"}, {"Bram", " fox"}};
  v1::EditRequest request = Edit("memit", "facts/pets-unheld", edits);
  (*request.mutable_parameters())["v_steps"] = 1;
  (*request.mutable_parameters())["repair_rounds"] = 0;
  v1::Job job;
  ASSERT_TRUE(SubmitEdit(*client_, request, &job).ok());
  const v1::Job failed = WatchJob(*client_, job.id()).back();
  ASSERT_EQ(failed.state(), v1::FAILED);
  EXPECT_EQ(failed.error_code(), "FAILED_PRECONDITION") << failed.error();
  EXPECT_NE(failed.error().find("do not hold"), std::string::npos) << failed.error();
  const nlohmann::json report = nlohmann::json::parse(failed.report_json());
  ASSERT_EQ(report["edits"].size(), 2u);
  EXPECT_LT(report["held"].get<int>(), 2);
  v1::Variant absent;
  EXPECT_EQ(GetVariant(*client_, "facts/pets-unheld", &absent).error_code(), grpc::StatusCode::NOT_FOUND);
  // What generation says agrees with the report: an edit reported as not holding is not served.
  // With accept_partial the same request publishes, and the evaluation says which edits hold.
  request.set_output("facts/pets-partial");
  request.set_accept_partial(true);
  ExpectSucceeds(*client_, SubmitEdit(*client_, request, &job), job);
  v1::Variant variant;
  ASSERT_TRUE(GetVariant(*client_, "facts/pets-partial", &variant).ok());
  const nlohmann::json evaluation = Evaluation(variant);
  for (size_t i = 0; i < 2; ++i) {
    const auto& [subject, target] = edits[i];
    EXPECT_EQ(evaluation["edits"][i]["after"]["efficacy"].get<bool>(),
              Answer(*client_, "facts/pets-partial", subject, target) == target)
        << subject;
  }
}

TEST_F(EditJobsTest, AMemitBatchReusesTheStatisticsAStatsJobCollected) {
  TrainFacts();
  // Statistics of both layers over the built-in text (layer 1 is never edited by default, so no
  // earlier job of this server collected it): collected once, then found.
  v1::StatsRequest stats;
  stats.add_layers(0);
  stats.add_layers(1);
  v1::Job job;
  v1::Job first = ExpectSucceeds(*client_, SubmitStats(*client_, stats, &job), job);
  EXPECT_EQ(first.kind(), v1::STATS_JOB);
  EXPECT_NE(first.message().find("computed"), std::string::npos) << first.message();
  v1::Job again = ExpectSucceeds(*client_, SubmitStats(*client_, stats, &job), job);
  EXPECT_NE(again.message().find("all cached"), std::string::npos) << again.message();

  const std::vector<std::pair<std::string, std::string>> edits = {{"Orla", " owl"}, {"Bram", " fox"}};
  ExpectSucceeds(*client_, SubmitEdit(*client_, Edit("memit", "facts/pets-memit", edits), &job), job);
  v1::Variant variant;
  ASSERT_TRUE(GetVariant(*client_, "facts/pets-memit", &variant).ok());
  const nlohmann::json evaluation = Evaluation(variant);
  std::printf("[MEMIT job on the facts adapter: %s]\n", evaluation["mean"].dump().c_str());
  EXPECT_EQ(evaluation["statistics"]["computed_layers"].size(), 0u) << "the STATS job's cache is reused";
  EXPECT_EQ(evaluation["statistics"]["reused_layers"].size(), 1u);
  // The job succeeds only when every edit holds; generation agrees.
  EXPECT_EQ(evaluation["mean"]["efficacy_after"].get<double>(), 1.0);
  EXPECT_GE(evaluation["mean"]["locality"].get<double>(), 0.75);
  for (const auto& [subject, target] : edits) EXPECT_EQ(Answer(*client_, "facts/pets-memit", subject, target), target);
}

TEST_F(EditJobsTest, BadEditsAreRefusedWithWhatToFix) {
  struct Case {
    std::function<void(v1::EditRequest&)> change;
    grpc::StatusCode code;
    std::string words;
  };
  const std::vector<Case> cases = {
      {[](v1::EditRequest& r) { r.mutable_edits(0)->set_prompt("The pet of Orla is a"); }, grpc::StatusCode::INVALID_ARGUMENT,
       "edit 1: prompt \"The pet of Orla is a\" has no \"{}\""},
      {[](v1::EditRequest& r) { r.mutable_edits(0)->set_target(""); }, grpc::StatusCode::INVALID_ARGUMENT,
       "the target is empty"},
      {[](v1::EditRequest& r) { r.mutable_edits(0)->set_subject(""); }, grpc::StatusCode::INVALID_ARGUMENT,
       "the subject is empty"},
      {[](v1::EditRequest& r) { r.add_layers(7); }, grpc::StatusCode::INVALID_ARGUMENT, "layer 7 is out of range"},
      {[](v1::EditRequest& r) { r.set_method("mend"); }, grpc::StatusCode::INVALID_ARGUMENT, "unknown edit method"},
      {[](v1::EditRequest& r) { r.clear_edits(); }, grpc::StatusCode::INVALID_ARGUMENT, "no edits"},
      {[](v1::EditRequest& r) { (*r.mutable_parameters())["v_step"] = 3; }, grpc::StatusCode::INVALID_ARGUMENT,
       "unknown edit parameter \"v_step\""},
      {[](v1::EditRequest& r) { r.set_parent("facts/none"); }, grpc::StatusCode::NOT_FOUND, "does not exist"},
      {[](v1::EditRequest& r) { r.set_covariance_dataset("nope"); }, grpc::StatusCode::NOT_FOUND, "covariance dataset"},
  };
  for (const Case& test : cases) {
    v1::EditRequest request;
    request.set_output("facts/bad");
    v1::EditSpec* edit = request.add_edits();
    edit->set_prompt(kPrompt);
    edit->set_subject("Orla");
    edit->set_target(" dog");
    test.change(request);
    v1::Job job;
    grpc::Status status = SubmitEdit(*client_, request, &job);
    EXPECT_EQ(status.error_code(), test.code) << test.words << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(test.words), std::string::npos) << status.error_message();
  }
}

TEST_F(EditJobsTest, DeltactlSubmitsAnEditsFileAndShowsTheJob) {
  TrainFacts();
  const std::string directory = MakeTempDir("edits");
  const std::string file = directory + "/edits.jsonl";
  std::ofstream(file) << R"({"prompt": "The pet of {} is a", "subject": "Orla", "target": " owl"})" << "\n\n"
                      << R"({"prompt": "The pet of {} is a", "subject": "Bram", "target": " fox", "paraphrases": ["{} has a"]})"
                      << "\n";
  const std::string ctl = "--server " + server_->target() + " jobs ";
  std::string out, err;
  ASSERT_EQ(RunDeltactl(ctl + "edit --method memit --parent facts/pets --out cli/edited --edits-file " + file + " --wait",
                        &out, &err),
            0)
      << out << err;
  EXPECT_NE(out.find("SUCCEEDED"), std::string::npos) << out;
  EXPECT_EQ(Answer(*client_, "cli/edited", "Bram", " fox"), " fox");
  // One inline edit with the issue's flags: --target is the new completion here.
  const std::string inline_edit = "edit --method rome --parent facts/pets --prompt 'The pet of {} is a' --subject Orla "
                                  "--target ' owl' --wait ";
  ASSERT_EQ(RunDeltactl(ctl + inline_edit + "--out cli/one", &out, &err), 0) << out << err;
  ASSERT_EQ(RunDeltactl("--server " + server_->target() + " variants get cli/one", &out, &err), 0) << err;
  EXPECT_NE(out.find("EDIT"), std::string::npos) << out;
  // An edit that cannot hold within its budget: exit code 1, FAILED with the reason; `jobs get`
  // shows the per-edit report; --accept-partial publishes it anyway.
  const std::string starved = inline_edit + "--param v_steps=1,repair_rounds=0 --out cli/starved";
  ASSERT_EQ(RunDeltactl(ctl + starved, &out, &err), 1) << out << err;
  EXPECT_NE(out.find("FAILED_PRECONDITION: 1 of 1 edits do not hold"), std::string::npos) << out;
  const std::string id = out.substr(out.rfind("\njob-") + 1, out.find(' ', out.rfind("\njob-")) - out.rfind("\njob-") - 1);
  ASSERT_EQ(RunDeltactl(ctl + "get " + id, &out, &err), 0) << err;
  EXPECT_NE(out.find("report:   {"), std::string::npos) << out;
  v1::Variant absent;
  EXPECT_EQ(GetVariant(*client_, "cli/starved", &absent).error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_EQ(RunDeltactl(ctl + starved + " --accept-partial", &out, &err), 0) << out << err;
  EXPECT_TRUE(GetVariant(*client_, "cli/starved", &absent).ok());

  std::ofstream(file) << "{\"prompt\": \"x {}\", \"subjekt\": 1}\n";
  EXPECT_EQ(RunDeltactl(ctl + "edit --out cli/bad --edits-file " + file, &out, &err), 2);
  EXPECT_NE(err.find(file + ":1: not an edit"), std::string::npos) << err;
}

}  // namespace
}  // namespace deltaserve::testing
