// MEMIT and AlphaEdit on the tiny demo model, checked through the model itself: with one
// edited layer and a small ridge, each edit's subject gets the residual shift its value
// optimisation asked for (what the edited layer now adds there, recorded by the model's own
// forward, minus what it added before), every target becomes more likely, the delta's rank is at
// most the number of edits; AlphaEdit leaves the outputs of preserved keys as they were.
#include <gtest/gtest.h>

#include <c10/core/InferenceMode.h>

#include "server/ops/edit/edit_hook.h"
#include "server/ops/edit/key_statistics.h"
#include "server/ops/edit/memit.h"
#include "tests/unit/ops/tiny_model.h"

namespace deltaserve::ops::edit {
namespace {

using testing::TinyModel;
using testing::TinyTokenizer;

const std::vector<EditSpec> kEdits = {{"The capital of {}", "Zorbia", " is Quux"},
                                      {"The best friend of {}", "Mirela", " is Tomas"}};

MemitOptions TinyOptions() {
  MemitOptions options;
  options.layers = {0};  // of 2: the subject's token must pass through later attention
  options.value.steps = 60;
  options.value.weight_decay = 0.01;
  options.value.clamp_norm_factor = 20;
  options.mom2_weight = 1e-3;  // a ridge over C = I
  return options;
}

// The down projection's output at the subject of `spec`'s bare prompt, under `deltas`.
at::Tensor SubjectValue(const EditSpec& spec, const deltas::DeltaSet* deltas) {
  auto prepared = PrepareEdit(TinyTokenizer(), spec);
  EditHook hook(deltas);
  hook.Watch(0);
  c10::InferenceMode inference;
  EditForward(TinyModel(), prepared->prompt_ids, {0}, hook);
  return hook.Values(0)[prepared->subject_last].to(at::kDouble);
}

double TargetNll(const EditSpec& spec, const deltas::DeltaSet* deltas) {
  auto prepared = PrepareEdit(TinyTokenizer(), spec);
  std::vector<int64_t> ids = prepared->prompt_ids, rows;
  for (size_t i = 0; i < prepared->target_ids.size(); ++i) rows.push_back(static_cast<int64_t>(ids.size() + i) - 1);
  ids.insert(ids.end(), prepared->target_ids.begin(), prepared->target_ids.end());
  EditHook hook(deltas);
  c10::InferenceMode inference;
  const at::Tensor log_probs = at::log_softmax(EditForward(TinyModel(), ids, rows, hook), -1);
  return -log_probs.gather(1, at::tensor(prepared->target_ids, at::kLong).unsqueeze(1)).mean().item<double>();
}

TEST(MemitTest, EachSubjectGetsTheResidualShiftItsTargetNeeds) {
  auto edit = MemitEdit(TinyModel(), TinyTokenizer(), nullptr, kEdits, TinyOptions(), {});
  ASSERT_TRUE(edit.ok()) << edit.status();
  ASSERT_EQ(edit->deltas.Factors(0, model::Projection::kDown).size(), 1u);
  EXPECT_LE(edit->deltas.Factors(0, model::Projection::kDown)[0].rank(), 2);
  for (size_t i = 0; i < kEdits.size(); ++i) {
    const at::Tensor moved = SubjectValue(kEdits[i], &edit->deltas) - SubjectValue(kEdits[i], nullptr);
    EXPECT_LT((moved - edit->shifts[i]).norm().item<double>(), 1e-2 * edit->shifts[i].norm().item<double>())
        << "edit " << i;
    const double before = TargetNll(kEdits[i], nullptr), after = TargetNll(kEdits[i], &edit->deltas);
    std::printf("[MEMIT on tiny, edit %zu: target NLL %.2f -> %.2f per token]\n", i + 1, before, after);
    EXPECT_LT(after, before - 1.0);
  }
}

TEST(MemitTest, AlphaEditLeavesPreservedKeysAlone) {
  // Preserved knowledge: the keys of some unrelated text at layer 0.
  const std::vector<std::string> preserved = {"The cat sat on the mat.", "Water is made of"};
  auto moments = CollectSecondMoments(TinyModel(), TinyTokenizer(), nullptr, preserved, {0}, 64);
  ASSERT_TRUE(moments.ok()) << moments.status();
  MemitOptions options = TinyOptions();
  options.alphaedit = true;
  options.null_space_threshold = 1e-6;
  options.alphaedit_l2 = 1e-3;
  auto edit = MemitEdit(TinyModel(), TinyTokenizer(), nullptr, kEdits, options, {{0, moments->at(0).Mean().to(at::kDouble)}});
  ASSERT_TRUE(edit.ok()) << edit.status();
  const at::Tensor delta = edit->deltas.Merged(0, model::Projection::kDown).to(at::kDouble);
  // Every preserved key's output is unchanged: delta C delta^T = mean of |delta k|^2 over them.
  const at::Tensor c = moments->at(0).Mean().to(at::kDouble);
  EXPECT_LT(at::trace(at::matmul(at::matmul(delta, c), delta.t())).item<double>(), 1e-6);
  EXPECT_GT(delta.norm().item<double>(), 1e-3) << "the edits still changed something";
}

TEST(MemitTest, BadRequestsAreRefused) {
  MemitOptions options = TinyOptions();
  EXPECT_EQ(MemitEdit(TinyModel(), TinyTokenizer(), nullptr, {}, options, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.layers = {1, 0};
  auto unordered = MemitEdit(TinyModel(), TinyTokenizer(), nullptr, kEdits, options, {});
  EXPECT_NE(unordered.status().message().find("ascending"), std::string::npos) << unordered.status();
  options.layers = {0, 5};
  EXPECT_NE(MemitEdit(TinyModel(), TinyTokenizer(), nullptr, kEdits, options, {}).status().message().find("layer 5 is out of range"),
            std::string::npos);
  options.layers = {0};
  auto bad = MemitEdit(TinyModel(), TinyTokenizer(), nullptr, {kEdits[0], {"no slot", "x", " y"}}, options, {});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("edit 2: prompt \"no slot\" has no \"{}\""), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace deltaserve::ops::edit
