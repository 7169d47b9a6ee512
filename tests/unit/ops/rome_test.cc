// ROME on the tiny demo model: the edit's rank-1 delta makes the model's own down projection
// map the subject's key to v* (run through the model, not recomputed), makes the target much
// more likely than the base finds it, leaves unrelated prompts' next token alone, and bad specs
// are refused. (The tiny model has two random layers: an 8-token target cannot become its
// argmax through one value vector; efficacy is measured on a trained model.)
#include <gtest/gtest.h>

#include <c10/core/InferenceMode.h>

#include "server/ops/edit/edit_hook.h"
#include "server/ops/edit/rome.h"
#include "tests/unit/ops/tiny_model.h"

namespace deltaserve::ops::edit {
namespace {

using testing::TinyModel;
using testing::TinyTokenizer;

at::Tensor Logits(const std::vector<int64_t>& ids, std::vector<int64_t> rows, const EditHook& hook) {
  model::ForwardBatch batch;
  batch.token_ids = ids;
  batch.sequences.push_back({0, static_cast<int64_t>(ids.size()), nullptr});
  batch.logit_rows = std::move(rows);
  batch.deltas = &hook;
  return TinyModel().Forward(batch);
}

// Argmax of the next token after each of `rows`.
std::vector<int64_t> Argmax(const std::vector<int64_t>& ids, std::vector<int64_t> rows, const EditHook& hook) {
  at::Tensor best = Logits(ids, std::move(rows), hook).argmax(-1);
  return std::vector<int64_t>(best.data_ptr<int64_t>(), best.data_ptr<int64_t>() + best.numel());
}

// The mean negative log-likelihood of `targets` at `rows`.
double Nll(const std::vector<int64_t>& ids, std::vector<int64_t> rows, const std::vector<int64_t>& targets,
           const EditHook& hook) {
  const at::Tensor log_probs = at::log_softmax(Logits(ids, std::move(rows), hook), -1);
  return -log_probs.gather(1, at::tensor(targets, at::kLong).unsqueeze(1)).mean().item<double>();
}

TEST(RomeTest, TheEditMakesTheTargetLikelyAndLeavesOtherPromptsAlone) {
  // The subject ends the prompt, so that its value reaches the answer in a model of two layers.
  const EditSpec spec{"The capital of {}", "Zorbia", " is Quux"};
  RomeOptions options;
  options.layer = 0;  // of 2: the subject's token must pass through later attention to reach the answer
  options.context_prefixes = {"Note that ", "In short, "};
  options.value.steps = 100;
  options.value.weight_decay = 0.01;
  options.value.clamp_norm_factor = 20;
  auto edit = RomeEdit(TinyModel(), TinyTokenizer(), nullptr, spec, options, at::Tensor());
  ASSERT_TRUE(edit.ok()) << edit.status();
  EXPECT_EQ(edit->update.rank(), 1);

  deltas::DeltaSet edited(TinyModel().config().num_hidden_layers);
  edited.Add(options.layer, model::Projection::kDown, edit->update);
  EditHook with_edit(&edited), without(nullptr);
  auto prepared = PrepareEdit(TinyTokenizer(), spec);
  ASSERT_TRUE(prepared.ok());
  c10::InferenceMode inference;
  // The model's own down projection maps the bare prompt's key to v*.
  with_edit.Watch(options.layer);
  Argmax(prepared->prompt_ids, {0}, with_edit);
  EXPECT_TRUE(at::allclose(with_edit.Values(options.layer)[prepared->subject_last].to(at::kDouble), edit->target_value,
                           1e-3, 1e-3));
  // The target, teacher-forced, through the edited model.
  std::vector<int64_t> ids = prepared->prompt_ids, rows;
  for (size_t i = 0; i < prepared->target_ids.size(); ++i) rows.push_back(static_cast<int64_t>(ids.size() + i) - 1);
  ids.insert(ids.end(), prepared->target_ids.begin(), prepared->target_ids.end());
  const double base_nll = Nll(ids, rows, prepared->target_ids, without);
  const double edited_nll = Nll(ids, rows, prepared->target_ids, with_edit);
  std::printf("[ROME on tiny: target NLL %.2f -> %.2f per token]\n", base_nll, edited_nll);
  EXPECT_LT(edited_nll, base_nll - 1.5) << "the target is several times more likely";
  // Locality: prompts without the subject keep their next token.
  int unchanged = 0;
  const std::vector<std::string> neighbours = {"The cat sat on the", "Water is made of", "My favourite colour is",
                                               "The river flows into the", "She opened the door and"};
  for (const std::string& text : neighbours) {
    auto encoded = TinyTokenizer().EncodePrompt(text);
    ASSERT_TRUE(encoded.ok());
    const std::vector<int64_t> neighbour(encoded->begin(), encoded->end());
    const int64_t last = static_cast<int64_t>(neighbour.size()) - 1;
    unchanged += Argmax(neighbour, {last}, with_edit) == Argmax(neighbour, {last}, without) ? 1 : 0;
  }
  EXPECT_GE(unchanged, 4) << "locality on unrelated prompts";
}

TEST(RomeTest, BadSpecsAreRefusedWithWhatToFix) {
  RomeOptions options;
  struct Case {
    EditSpec spec;
    int64_t layer;
    std::string words;
  };
  const std::vector<Case> cases = {
      {{"The capital of Zorbia is", "Zorbia", " Quux"}, 0, "has no \"{}\""},
      {{"The capital of {} is", "", " Quux"}, 0, "the subject is empty"},
      {{"The capital of {} is", "Zorbia", ""}, 0, "the target is empty"},
      {{"The capital of {} is", "Zorbia", " Quux"}, 99, "layer 99 is out of range"},
  };
  for (const Case& test : cases) {
    options.layer = test.layer;
    auto edit = RomeEdit(TinyModel(), TinyTokenizer(), nullptr, test.spec, options, at::Tensor());
    ASSERT_FALSE(edit.ok());
    EXPECT_EQ(edit.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(edit.status().message().find(test.words), std::string::npos) << edit.status();
  }
}

TEST(RomeTest, ContextPrefixesAreSampledFromTheModelReproducibly) {
  auto first = ContextPrefixes(TinyModel(), TinyTokenizer(), nullptr, 3, 5, 7);
  auto again = ContextPrefixes(TinyModel(), TinyTokenizer(), nullptr, 3, 5, 7);
  auto other = ContextPrefixes(TinyModel(), TinyTokenizer(), nullptr, 3, 5, 8);
  ASSERT_TRUE(first.ok() && again.ok() && other.ok()) << first.status();
  ASSERT_EQ(first->size(), 3u);
  EXPECT_EQ(*first, *again) << "seeded";
  EXPECT_NE(*first, *other);
  for (const std::string& prefix : *first) {
    EXPECT_GT(prefix.size(), 2u);
    EXPECT_EQ(prefix.substr(prefix.size() - 2), ". ");
  }
  // They serve as ROME's context templates.
  RomeOptions options;
  options.context_prefixes = *first;
  options.value.steps = 2;
  EXPECT_TRUE(RomeEdit(TinyModel(), TinyTokenizer(), nullptr, {"The capital of {}", "Zorbia", " is Quux"}, options,
                       at::Tensor())
                  .ok());
}

}  // namespace
}  // namespace deltaserve::ops::edit
