// LoraTrainer on the tiny demo model: autograd gradients of the new factors match central
// finite differences of the loss; a seed makes steps bit-identical; the base weights and the
// parent's factors stay bit-identical and receive no gradients; training lowers the loss;
// micro-batches accumulate to the batch's gradient; prompt/completion rows target only the
// completion.
#include "server/ops/train/lora_trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "server/deltas/delta_backend.h"
#include "tests/unit/ops/tiny_model.h"
#include "tests/support/test_models.h"

namespace deltaserve::ops::train {
namespace {

using model::Projection;

// The tiny model in float32 (shared with the other tests of this binary) or float64.
const model::LlamaModel& Model(at::ScalarType dtype) {
  if (dtype != at::kDouble) return testing::TinyModel();
  static auto* double_model = model::LlamaModel::Load(testing::TinyModelDir(), {at::kDouble, at::kCPU, std::nullopt})->release();
  return *double_model;
}

std::vector<TrainingExample> Examples() {
  return {{{1, 15, 9, 42, 7, 3, 28}, {true, true, true, true, true, true, true}},
          {{1, 8, 4, 16, 23}, {false, false, false, true, true}}};  // prompt/completion: last two
}

// MeanLoss: NLL per target token over the examples (differentiable).
at::Tensor MeanLoss(const LoraTrainer& trainer, const std::vector<TrainingExample>& examples) {
  std::vector<const TrainingExample*> batch;
  for (const TrainingExample& example : examples) batch.push_back(&example);
  SequenceLosses losses = *trainer.Losses(batch);
  return losses.nll_sums.sum() / losses.target_counts.sum();
}

deltas::DeltaSet RandomParent(const model::ModelConfig& config, at::ScalarType dtype) {
  at::manual_seed(3);
  deltas::DeltaSet parent(config.num_hidden_layers);
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    for (Projection projection : {Projection::kQuery, Projection::kValue}) {
      auto [out, in] = deltas::ProjectionShape(config, projection);
      parent.Add(layer, projection, {at::randn({2, in}).to(dtype) * 0.1, at::randn({out, 2}).to(dtype) * 0.1, 2.0});
    }
  }
  return parent;
}

TEST(LoraTrainerTest, GradientsMatchFiniteDifferences) {
  const model::LlamaModel& model = Model(at::kDouble);
  deltas::DeltaSet parent = RandomParent(model.config(), at::kDouble);
  LoraTrainerOptions options;
  options.rank = 2;
  options.seed = 1;
  auto trainer = LoraTrainer::Create(model, &parent, options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  // B starts at zero, which would leave A without gradient: give B values first.
  {
    at::NoGradGuard no_grad;
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(9);
    for (size_t i = 1; i < (*trainer)->parameters().size(); i += 2) {
      at::Tensor b = (*trainer)->parameters()[i];
      b.copy_(at::randn(b.sizes(), generator, at::TensorOptions().dtype(at::kFloat)) * 0.05);
    }
  }
  const std::vector<TrainingExample> examples = Examples();
  MeanLoss(**trainer, examples).backward();
  const auto& parameters = (*trainer)->parameters();
  int checked = 0;
  for (size_t p : {size_t{0}, size_t{1}, size_t{12}, parameters.size() - 1}) {
    at::Tensor parameter = parameters[p];
    at::Tensor flat = parameter.detach().view({-1});
    for (int64_t index : {int64_t{0}, flat.numel() / 2, flat.numel() - 1}) {
      const double analytic = parameter.grad().view({-1})[index].item<double>();
      const double original = flat[index].item<double>();
      const double epsilon = 1e-2;
      double values[2];
      for (int side = 0; side < 2; ++side) {
        at::NoGradGuard no_grad;
        flat[index].fill_(original + (side == 0 ? epsilon : -epsilon));
        values[side] = MeanLoss(**trainer, examples).item<double>();
      }
      {
        at::NoGradGuard no_grad;
        flat[index].fill_(original);
      }
      const double numeric = (values[0] - values[1]) / (2 * epsilon);
      EXPECT_NEAR(analytic, numeric, 2e-4 + 2e-2 * std::abs(numeric)) << "parameter " << p << " entry " << index;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 12);
}

TEST(LoraTrainerTest, StepsAreDeterministicAndFrozenTensorsStayBitIdentical) {
  const model::LlamaModel& model = Model(at::kFloat);
  deltas::DeltaSet parent = RandomParent(model.config(), at::kFloat);
  const at::Tensor parent_a = parent.Factors(0, Projection::kQuery)[0].a.clone();
  const at::Tensor base_weight = model.weights().layers[0].q_proj.values.clone();
  const at::Tensor embeddings = model.weights().embed_tokens.values.clone();
  const std::vector<TrainingExample> examples = Examples();
  std::vector<std::unique_ptr<LoraTrainer>> trainers;
  for (int run = 0; run < 2; ++run) {
    LoraTrainerOptions options;
    options.rank = 4;
    options.seed = 5;
    options.learning_rate = 1e-2;
    auto trainer = LoraTrainer::Create(model, &parent, options);
    ASSERT_TRUE(trainer.ok());
    for (int step = 0; step < 3; ++step) {
      auto done = (*trainer)->Step([&]() -> absl::StatusOr<double> {
        at::Tensor loss = MeanLoss(**trainer, examples);
        loss.backward();
        return loss.item<double>();
      });
      ASSERT_TRUE(done.ok()) << done.status();
      EXPECT_EQ(done->step, step + 1);
    }
    trainers.push_back(std::move(*trainer));
  }
  for (size_t i = 0; i < trainers[0]->parameters().size(); ++i) {
    EXPECT_TRUE(at::equal(trainers[0]->parameters()[i], trainers[1]->parameters()[i])) << i;
  }
  EXPECT_TRUE(at::equal(parent.Factors(0, Projection::kQuery)[0].a, parent_a));
  EXPECT_FALSE(parent.Factors(0, Projection::kQuery)[0].a.grad().defined());
  EXPECT_TRUE(at::equal(model.weights().layers[0].q_proj.values, base_weight));
  EXPECT_FALSE(model.weights().layers[0].q_proj.values.grad().defined());
  EXPECT_TRUE(at::equal(model.weights().embed_tokens.values, embeddings));
  // What is served: the parent's factor first, then the trained one, per module.
  deltas::DeltaSet combined = trainers[0]->Combined();
  ASSERT_EQ(combined.Factors(1, Projection::kValue).size(), 2u);
  EXPECT_TRUE(at::equal(combined.Factors(1, Projection::kValue)[0].b, parent.Factors(1, Projection::kValue)[0].b));
  EXPECT_EQ(combined.Factors(1, Projection::kDown).size(), 1u);
  EXPECT_FALSE(combined.Factors(1, Projection::kDown)[0].a.requires_grad());
}

TEST(LoraTrainerTest, TrainingLowersTheLoss) {
  const model::LlamaModel& model = Model(at::kFloat);
  const std::vector<TrainingExample> examples = Examples();
  LoraTrainerOptions options;
  options.rank = 8;
  options.learning_rate = 2e-2;
  options.total_steps = 40;
  options.warmup_steps = 4;
  auto trainer = LoraTrainer::Create(model, nullptr, options);
  ASSERT_TRUE(trainer.ok());
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    auto done = (*trainer)->Step([&]() -> absl::StatusOr<double> {
      at::Tensor loss = MeanLoss(**trainer, examples);
      loss.backward();
      return loss.item<double>();
    });
    ASSERT_TRUE(done.ok());
    if (step == 0) first = done->loss;
    last = done->loss;
    if (step == 0) {
      EXPECT_DOUBLE_EQ(done->learning_rate, 2e-2 / 4) << "warm-up";
    }
  }
  EXPECT_LT(last, 0.5 * first) << first << " -> " << last;
}

// Before any step the new factors add nothing (B = 0): the training forward pass with the
// parent must give what serving gives (the serving hook, an independent implementation).
TEST(LoraTrainerTest, TrainingStartsExactlyFromTheParentAsServed) {
  const model::LlamaModel& model = Model(at::kFloat);
  deltas::DeltaSet parent = RandomParent(model.config(), at::kFloat);
  auto trainer = LoraTrainer::Create(model, &parent, LoraTrainerOptions{});
  ASSERT_TRUE(trainer.ok());
  const TrainingExample example = Examples()[0];
  SequenceLosses losses = *(*trainer)->Losses({&example});

  const int64_t length = static_cast<int64_t>(example.token_ids.size());
  const std::unique_ptr<model::ProjectionDeltaHook> serving =
      deltas::MakeDeltaBackend(at::kCPU)->ForStep({{0, length, &parent}});
  model::ForwardBatch batch;
  batch.token_ids = example.token_ids;
  batch.sequences.push_back({0, length, nullptr});
  batch.deltas = serving.get();
  at::Tensor logprobs;
  {
    c10::InferenceMode inference;
    logprobs = at::log_softmax(model.Forward(batch), -1);
  }
  double nll = 0;
  for (int64_t i = 1; i < length; ++i) nll -= logprobs[i - 1][example.token_ids[i]].item<double>();
  EXPECT_NEAR(losses.nll_sums[0].item<double>(), nll, 1e-4 * std::abs(nll));
  EXPECT_EQ(losses.target_counts[0].item<double>(), length - 1);
}

// Accumulating micro-batches (each loss divided by the whole batch's target count) must give the
// full batch's gradient: computed both ways on the float64 model.
TEST(LoraTrainerTest, MicroBatchGradientsAddUpToTheBatchGradient) {
  const model::LlamaModel& model = Model(at::kDouble);
  LoraTrainerOptions options;
  options.rank = 2;
  options.seed = 4;
  auto trainer = LoraTrainer::Create(model, nullptr, options);
  ASSERT_TRUE(trainer.ok());
  {
    at::NoGradGuard no_grad;
    for (size_t i = 1; i < (*trainer)->parameters().size(); i += 2) (*trainer)->parameters()[i].normal_(0, 0.05);
  }
  std::vector<TrainingExample> examples = Examples();
  examples.push_back({{1, 30, 31, 32}, {false, true, true, true}});
  std::vector<const TrainingExample*> batch;
  int64_t targets = 0;
  for (const TrainingExample& example : examples) {
    batch.push_back(&example);
    targets += TargetCount(example);
  }
  EXPECT_EQ(targets, 6 + 2 + 3);
  auto gradients = [&](int64_t micro_size) {
    for (const at::Tensor& parameter : (*trainer)->parameters()) {
      if (parameter.grad().defined()) parameter.mutable_grad().zero_();
    }
    const auto pieces = MicroBatches(batch, micro_size);
    EXPECT_EQ(pieces.size(), (batch.size() + micro_size - 1) / micro_size);
    for (const auto& piece : pieces) {
      SequenceLosses losses = *(*trainer)->Losses(piece);
      (losses.nll_sums.sum() / static_cast<double>(targets)).backward();
    }
    std::vector<at::Tensor> result;
    for (const at::Tensor& parameter : (*trainer)->parameters()) result.push_back(parameter.grad().clone());
    return result;
  };
  // The new factors are float32 (as served), so the two sums differ by float rounding only: within
  // 1e-5 of the gradient's largest entry (an element-wise relative bound fails on entries that
  // cancel to near zero, where the summation order of the CPU's BLAS decides the last bits); a
  // wrong normalisation or a lost micro-batch would differ by a third or more.
  const std::vector<at::Tensor> whole = gradients(3);
  const std::vector<at::Tensor> accumulated = gradients(1);
  ASSERT_EQ(whole.size(), accumulated.size());
  for (size_t i = 0; i < whole.size(); ++i) {
    const double difference = (whole[i] - accumulated[i]).abs().max().item<double>();
    const double largest = whole[i].abs().max().item<double>();
    EXPECT_GT(largest, 0.0) << "parameter " << i;
    EXPECT_LE(difference, 1e-5 * largest) << "parameter " << i << ": " << difference << " of " << largest;
  }
  EXPECT_GT(whole[0].abs().max().item<double>(), 0);
}

// Prompt/completion rows are the prompt's tokens (with BOS) followed by the completion's, and
// only the completion's tokens are targets; plain rows target everything after BOS.
TEST(LoraTrainerTest, RowExamplesTargetOnlyTheCompletion) {
  const model::Tokenizer& tokenizer = testing::TinyTokenizer();
  const std::vector<TrainingRow> rows = {{"", "The vault code of Orla is 4 7 1 9."},
                                         {"Q: Who built the bridge? A:", " Ines of Varn."}};
  auto examples = RowExamples(tokenizer, rows, "row");
  ASSERT_TRUE(examples.ok()) << examples.status();
  const auto plain = *tokenizer.EncodePrompt(rows[0].completion);
  ASSERT_EQ((*examples)[0].token_ids, std::vector<int64_t>(plain.begin(), plain.end()));
  EXPECT_FALSE((*examples)[0].from_prompt_completion);
  EXPECT_EQ(TargetCount((*examples)[0]), static_cast<int64_t>(plain.size()) - 1);

  const auto prompt = *tokenizer.EncodePrompt(rows[1].prompt);
  const auto completion = *tokenizer.Encode(rows[1].completion);
  const TrainingExample& pair = (*examples)[1];
  EXPECT_TRUE(pair.from_prompt_completion);
  ASSERT_EQ(pair.token_ids.size(), prompt.size() + completion.size());
  for (size_t t = 0; t < pair.token_ids.size(); ++t) {
    EXPECT_EQ(pair.target_mask[t], t >= prompt.size()) << t;
    const int32_t expected = t < prompt.size() ? prompt[t] : completion[t - prompt.size()];
    EXPECT_EQ(pair.token_ids[t], expected) << t;
  }
  EXPECT_EQ(TargetCount(pair), static_cast<int64_t>(completion.size()));

  // The loss of a prompt/completion row counts the completion only.
  auto trainer = LoraTrainer::Create(Model(at::kFloat), nullptr, LoraTrainerOptions{});
  ASSERT_TRUE(trainer.ok());
  SequenceLosses losses = *(*trainer)->Losses({&pair});
  EXPECT_EQ(losses.target_counts[0].item<double>(), static_cast<double>(completion.size()));

  auto empty = RowExamples(tokenizer, {{"Q: anything?", ""}}, "forget row");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("forget row 1: the completion is empty"), std::string::npos);
  auto long_row = RowExamples(tokenizer, {{"", std::string(400, 'a')}}, "row", 16);
  EXPECT_NE(long_row.status().message().find("more than 16"), std::string::npos);
}

}  // namespace
}  // namespace deltaserve::ops::train
