// Key statistics on the tiny model: the recorded keys are the down projection's real inputs
// (W_down k reproduces the recorded output), the streamed second moment over several texts
// equals K^T K / n of all their keys at once, a parent variant changes the keys, and the cache
// file round-trips (or is refused clearly).
#include <gtest/gtest.h>

#include <c10/core/InferenceMode.h>

#include "server/common/file_util.h"
#include "server/model/safetensors_tensor.h"
#include "server/ops/edit/edit_hook.h"
#include "server/ops/edit/key_statistics.h"
#include "tests/unit/ops/tiny_model.h"

namespace deltaserve::ops::edit {
namespace {

using testing::TinyModel;
using testing::TinyTokenizer;

const std::vector<std::string> kTexts = {"The cat sat on the mat.", "Rivers flow into the sea, slowly.",
                                         "Seven apples and three pears."};

// Keys of one text at `layer`, recorded through the hook.
std::pair<at::Tensor, at::Tensor> KeysAndValues(const std::string& text, int64_t layer, const deltas::DeltaSet* parent) {
  EditHook hook(parent);
  hook.Watch(layer);
  auto ids = TinyTokenizer().EncodePrompt(text);
  model::ForwardBatch batch;
  batch.token_ids.assign(ids->begin(), ids->end());
  batch.sequences.push_back({0, static_cast<int64_t>(ids->size()), nullptr});
  batch.deltas = &hook;
  c10::InferenceMode inference;
  TinyModel().Forward(batch);
  return {hook.Keys(layer).clone(), hook.Values(layer).clone()};
}

TEST(KeyStatisticsTest, KeysAreTheDownProjectionsInputs) {
  for (int64_t layer : {0, 1}) {
    auto [keys, values] = KeysAndValues(kTexts[0], layer, nullptr);
    const at::Tensor down = TinyModel().weights().layers[layer].down_proj.Dense(at::kFloat);
    EXPECT_TRUE(at::allclose(at::matmul(keys, down.t()), values, 1e-4, 1e-4)) << "layer " << layer;
  }
}

TEST(KeyStatisticsTest, StreamedMomentsEqualAllKeysAtOnce) {
  auto moments = CollectSecondMoments(TinyModel(), TinyTokenizer(), nullptr, kTexts, {0, 1}, 64);
  ASSERT_TRUE(moments.ok()) << moments.status();
  for (int64_t layer : {0, 1}) {
    std::vector<at::Tensor> all;
    for (const std::string& text : kTexts) all.push_back(KeysAndValues(text, layer, nullptr).first);
    const at::Tensor keys = at::cat(all, 0).to(at::kDouble);
    const SecondMoment& moment = moments->at(layer);
    EXPECT_EQ(moment.count(), keys.size(0));
    EXPECT_TRUE(at::allclose(moment.Mean().to(at::kDouble), at::matmul(keys.t(), keys) / keys.size(0), 1e-5, 1e-6));
  }
  EXPECT_EQ(CollectSecondMoments(TinyModel(), TinyTokenizer(), nullptr, kTexts, {2}, 64).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KeyStatisticsTest, AParentVariantChangesTheKeys) {
  const model::ModelConfig& config = TinyModel().config();
  deltas::DeltaSet parent(config.num_hidden_layers);
  parent.Add(0, model::Projection::kUp,
             {at::randn({2, config.hidden_size}), at::randn({config.intermediate_size, 2}), 1.0});
  const at::Tensor base = KeysAndValues(kTexts[1], 0, nullptr).first;
  const at::Tensor stacked = KeysAndValues(kTexts[1], 0, &parent).first;
  EXPECT_GT((stacked - base).abs().max().item<double>(), 1e-3);
}

TEST(KeyStatisticsTest, TheCacheFileRoundTripsOrIsRefused) {
  const std::string directory = testing::MakeTempDir("key-stats");
  SecondMoment moment(4);
  ASSERT_TRUE(moment.Add(at::randn({9, 4})).ok());
  ASSERT_TRUE(SaveSecondMoment(directory + "/layer-0.safetensors", moment).ok());
  auto loaded = LoadSecondMoment(directory + "/layer-0.safetensors");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->count(), 9);
  EXPECT_TRUE(at::equal(loaded->sum(), moment.sum()));
  EXPECT_EQ(LoadSecondMoment(directory + "/absent.safetensors").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(model::WriteSafetensors(directory + "/other.safetensors", {{"x", at::zeros({2})}}).ok());
  EXPECT_EQ(LoadSecondMoment(directory + "/other.safetensors").status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace deltaserve::ops::edit
