// The parts of edit jobs below the server: the default layers by depth, and the key-statistics
// cache (collected once, then read back equal to a direct collection over the same texts, per
// model fingerprint and dataset digest; a file that does not read back is collected again).
#include <fstream>

#include <gtest/gtest.h>

#include "server/control/edit_jobs.h"
#include "server/control/key_statistics_cache.h"
#include "server/ops/edit/key_statistics.h"
#include "tests/unit/ops/tiny_model.h"

namespace deltaserve::control {
namespace {

using testing::TinyModel;
using testing::TinyTokenizer;

TEST(EditLayersTest, DefaultsFollowTheDepthAndAvoidTheLastLayer) {
  EXPECT_EQ(EditLayers("rome", 2), std::vector<int64_t>({0}));
  EXPECT_EQ(EditLayers("memit", 2), std::vector<int64_t>({0}));
  EXPECT_EQ(EditLayers("rome", 12), std::vector<int64_t>({1}));
  EXPECT_EQ(EditLayers("memit", 12), std::vector<int64_t>({1, 2}));
  EXPECT_EQ(EditLayers("memit", 32), std::vector<int64_t>({4, 5, 6, 7, 8})) << "MEMIT's layers for a 32-layer Llama";
  EXPECT_EQ(EditLayers("alphaedit", 1), std::vector<int64_t>({0}));
}

TEST(EditJobSpecTest, ItsJsonReadsBackForAJobResumedAfterARestart) {
  EditJobSpec spec;
  spec.parent = "team/facts";
  spec.output = "team/fixed";
  spec.method = "alphaedit";
  spec.edits = {{"The capital of {} is", "Zorbia", " Quux", {"{} has the capital"}, {"The river flows"}},
                {"{} plays the", "Ann", " oboe", {}, {}}};
  spec.layers = {3, 4};
  spec.mom2_weight = 123.5;
  spec.covariance.dataset = "team/wiki";
  spec.covariance.dataset_sha256 = "ab12";
  spec.value.steps = 40;
  spec.value.learning_rate = 0.25;
  spec.context_prefixes = 2;
  spec.null_space_threshold = 0.05;
  spec.seed = 99;
  auto back = EditJobSpec::FromJson(spec.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(), spec.ToJson());
  EXPECT_EQ(back->edits[0].paraphrases, std::vector<std::string>({"{} has the capital"}));
  EXPECT_EQ(back->covariance.dataset_sha256, "ab12");
  EXPECT_FALSE(EditJobSpec::FromJson("{\"parent\": 1}").ok());

  StatsJobSpec stats;
  stats.layers = {1, 2};
  auto stats_back = StatsJobSpec::FromJson(stats.ToJson());
  ASSERT_TRUE(stats_back.ok());
  EXPECT_EQ(stats_back->layers, stats.layers);
}

TEST(KeyStatisticsCacheTest, CollectsOnceThenReusesWhatADirectCollectionGives) {
  const std::string directory = testing::MakeTempDir("stats");
  KeyStatisticsCache cache(directory, "model-a");
  const StatisticsSource source{{"The cat reads a book.", "Water boils at one hundred degrees.", "A short one."}, "abc"};
  int steps = 0;
  auto first = cache.Ensure(TinyModel(), TinyTokenizer(), {0, 1}, source, [&](int64_t done, int64_t total) {
    ++steps;
    EXPECT_LE(done, total);
    return absl::OkStatus();
  });
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->computed, std::vector<int64_t>({0, 1}));
  EXPECT_TRUE(first->reused.empty());
  EXPECT_GE(steps, 1);

  auto direct = ops::edit::CollectSecondMoments(TinyModel(), TinyTokenizer(), nullptr, source.texts, {0, 1}, 256);
  ASSERT_TRUE(direct.ok());
  for (int64_t layer : {0, 1}) {
    EXPECT_TRUE(at::allclose(first->covariances.at(layer), direct->at(layer).Mean().to(at::kDouble), 1e-5, 1e-6));
    EXPECT_EQ(first->keys.at(layer), direct->at(layer).count());
  }

  auto second = cache.Ensure(TinyModel(), TinyTokenizer(), {0, 1}, source, [&](int64_t, int64_t) {
    ADD_FAILURE() << "nothing is collected again";
    return absl::OkStatus();
  });
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->reused, std::vector<int64_t>({0, 1}));
  EXPECT_TRUE(second->computed.empty());
  EXPECT_TRUE(at::equal(second->covariances.at(1), first->covariances.at(1)));

  // Another dataset or another model is another entry.
  EXPECT_FALSE(cache.Cached(0, "other-digest"));
  EXPECT_FALSE(KeyStatisticsCache(directory, "model-b").Cached(0, "abc"));

  // A damaged file is collected again; a cancelled collection leaves nothing.
  std::ofstream(directory + "/model-a/abc/layer-1.safetensors") << "garbage";
  auto repaired = cache.Ensure(TinyModel(), TinyTokenizer(), {0, 1}, source, nullptr);
  ASSERT_TRUE(repaired.ok()) << repaired.status();
  EXPECT_EQ(repaired->computed, std::vector<int64_t>({1}));
  EXPECT_EQ(repaired->reused, std::vector<int64_t>({0}));
  auto cancelled = cache.Ensure(TinyModel(), TinyTokenizer(), {0}, {source.texts, "def"},
                                [](int64_t, int64_t) { return absl::CancelledError("cancelled"); });
  EXPECT_TRUE(absl::IsCancelled(cancelled.status()));
  EXPECT_FALSE(cache.Cached(0, "def"));
}

}  // namespace
}  // namespace deltaserve::control
