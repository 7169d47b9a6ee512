#include "server/control/unlearn_jobs.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/control/job_artifacts.h"
#include "server/ops/eval/membership.h"
#include "server/ops/eval/rouge.h"
#include "server/ops/train/lora_trainer.h"
#include "server/ops/unlearn/unlearn_losses.h"

namespace deltaserve::control {
namespace {

using ops::train::TrainingExample;

bool KnownMethod(const std::string& method) {
  return method == "grad_ascent" || method == "grad_diff" || method == "npo" || method == "simnpo";
}

double Beta(const UnlearnJobSpec& spec) {
  if (spec.beta > 0) return spec.beta;
  return spec.method == "simnpo" ? 4.5 : 0.1;
}

// Report measures one state of the model (before or after unlearning) on the job's texts.
absl::StatusOr<nlohmann::json> Report(const ops::train::LoraTrainer& trainer, const model::Tokenizer& tokenizer,
                                      const std::vector<TrainingExample>& forget,
                                      const std::vector<TrainingExample>& retain,
                                      const std::vector<TrainingExample>& holdout) {
  nlohmann::json report;
  ASSIGN_OR_RETURN(double forget_loss, trainer.MeanLoss(forget));
  report["forget_loss"] = forget_loss;
  report["forget_perplexity"] = std::exp(forget_loss);
  if (!retain.empty()) {
    ASSIGN_OR_RETURN(double retain_loss, trainer.MeanLoss(retain));
    report["retain_loss"] = retain_loss;
    report["retain_perplexity"] = std::exp(retain_loss);
  }
  // Verbatim memorisation: the greedy continuation of each forget text's first half against
  // its true second half.
  double rouge = 0;
  for (const TrainingExample& example : forget) {
    const size_t split = std::max<size_t>(2, example.token_ids.size() / 2);
    std::vector<int64_t> prompt(example.token_ids.begin(), example.token_ids.begin() + split);
    std::vector<int32_t> truth(example.token_ids.begin() + split, example.token_ids.end());
    ASSIGN_OR_RETURN(std::vector<int64_t> continuation,
                     trainer.GreedyContinuation(prompt, static_cast<int64_t>(truth.size())));
    rouge += ops::eval::RougeLF1(tokenizer.Decode(std::vector<int32_t>(continuation.begin(), continuation.end())),
                                 tokenizer.Decode(truth));
  }
  report["verbatim_rouge_l"] = forget.empty() ? 0.0 : rouge / forget.size();
  if (!holdout.empty()) {
    // Min-K% membership attack: members (forget) against non-members (holdout).
    auto scores = [&](const std::vector<TrainingExample>& texts) -> absl::StatusOr<std::vector<double>> {
      std::vector<double> result;
      at::NoGradGuard no_grad;
      for (const TrainingExample& example : texts) {
        ASSIGN_OR_RETURN(std::vector<double> logprobs, trainer.TargetLogprobs(example));
        result.push_back(ops::eval::MinKPercentScore(logprobs, 0.4));
      }
      return result;
    };
    ASSIGN_OR_RETURN(std::vector<double> members, scores(forget));
    ASSIGN_OR_RETURN(std::vector<double> others, scores(holdout));
    report["min_k_auc"] = ops::eval::RocAuc(members, others);
  }
  return report;
}

}  // namespace

std::string UnlearnJobSpec::ToJson() const {
  nlohmann::json json;
  json["target"] = target;
  json["output"] = output;
  json["method"] = method;
  json["forget_texts"] = forget_texts;
  json["retain_texts"] = retain_texts;
  json["holdout_texts"] = holdout_texts;
  json["rank"] = rank;
  json["lora_alpha"] = lora_alpha;
  json["steps"] = steps;
  json["learning_rate"] = learning_rate;
  json["batch_size"] = batch_size;
  json["forget_weight"] = forget_weight;
  json["retain_weight"] = retain_weight;
  json["beta"] = beta;
  json["delta"] = delta;
  json["seed"] = seed;
  return json.dump();
}

absl::StatusOr<UnlearnJobSpec> UnlearnJobSpec::FromJson(const std::string& text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return absl::InvalidArgumentError("an unlearn spec is not a JSON object");
  UnlearnJobSpec spec;
  try {
    spec.target = json.at("target").get<std::string>();
    spec.output = json.at("output").get<std::string>();
    spec.method = json.at("method").get<std::string>();
    spec.forget_texts = json.at("forget_texts").get<std::vector<std::string>>();
    spec.retain_texts = json.at("retain_texts").get<std::vector<std::string>>();
    spec.holdout_texts = json.at("holdout_texts").get<std::vector<std::string>>();
    spec.rank = json.at("rank").get<int64_t>();
    spec.lora_alpha = json.at("lora_alpha").get<double>();
    spec.steps = json.at("steps").get<int64_t>();
    spec.learning_rate = json.at("learning_rate").get<double>();
    spec.batch_size = json.at("batch_size").get<int64_t>();
    spec.forget_weight = json.at("forget_weight").get<double>();
    spec.retain_weight = json.at("retain_weight").get<double>();
    spec.beta = json.at("beta").get<double>();
    spec.delta = json.at("delta").get<double>();
    spec.seed = json.at("seed").get<uint64_t>();
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("an unlearn spec is malformed: ", error.what()));
  }
  return spec;
}

UnlearnJobs::UnlearnJobs(VariantRegistry* registry, JobRunner* runner)
    : registry_(registry),
      kind_(kUnlearnJobKind, registry, runner, [this](const UnlearnJobSpec& spec) { return Check(spec); },
            [this](const UnlearnJobSpec& spec, JobContext& context) { return Run(spec, context); }) {}

absl::StatusOr<JobRecord> UnlearnJobs::Submit(UnlearnJobSpec spec, const std::string& idempotency_key) {
  return kind_.Submit(std::move(spec), idempotency_key);
}

absl::StatusOr<int64_t> UnlearnJobs::Check(const UnlearnJobSpec& spec) const {
  RETURN_IF_ERROR(CheckNewOutput(*registry_, spec.output));
  if (spec.target.empty()) return absl::InvalidArgumentError("target is required: the variant to unlearn from");
  std::shared_ptr<const Variant> target = registry_->Find(spec.target);
  if (target == nullptr) return absl::NotFoundError(absl::StrCat("target variant \"", spec.target, "\" does not exist"));
  RETURN_IF_ERROR(CheckServable(*target));
  if (!KnownMethod(spec.method)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown unlearning method \"", spec.method, "\": use grad_ascent, grad_diff, npo or simnpo"));
  }
  if (spec.forget_texts.empty()) return absl::InvalidArgumentError("the forget set is empty: give forget texts");
  if (spec.method == "grad_diff" && spec.retain_texts.empty()) {
    return absl::InvalidArgumentError("grad_diff needs retain texts");
  }
  if (spec.rank < 1 || spec.rank > 256) return absl::InvalidArgumentError("rank must be 1 to 256");
  if (spec.steps < 1 || spec.steps > 100000) return absl::InvalidArgumentError("steps must be 1 to 100000");
  if (!(spec.learning_rate > 0 && spec.learning_rate < 1)) return absl::InvalidArgumentError("learning_rate must be in (0, 1)");
  if (spec.batch_size < 1 || spec.batch_size > 1024) return absl::InvalidArgumentError("batch_size must be 1 to 1024");
  if (!std::isfinite(spec.forget_weight) || !std::isfinite(spec.retain_weight) || !std::isfinite(spec.delta)) {
    return absl::InvalidArgumentError("weights and delta must be finite");
  }
  const model::Tokenizer& tokenizer = registry_->tokenizer();
  RETURN_IF_ERROR(ops::train::TextExamples(tokenizer, spec.forget_texts, "forget text").status());
  RETURN_IF_ERROR(ops::train::TextExamples(tokenizer, spec.retain_texts, "retain text").status());
  RETURN_IF_ERROR(ops::train::TextExamples(tokenizer, spec.holdout_texts, "holdout text").status());
  // Two batches (forget and retain) of activations, as a fine-tune estimates one.
  const model::ModelConfig& config = registry_->model().config();
  const int64_t tokens = 2 * spec.batch_size * 1024;
  return tokens * config.num_hidden_layers * (24 * config.hidden_size + 8 * config.intermediate_size) * 4 / 8 +
         tokens * config.vocab_size * 4 * 3 / 8;
}

absl::Status UnlearnJobs::Run(const UnlearnJobSpec& spec, JobContext& context) {
  const model::Tokenizer& tokenizer = registry_->tokenizer();
  ASSIGN_OR_RETURN(std::vector<TrainingExample> forget, ops::train::TextExamples(tokenizer, spec.forget_texts, "forget text"));
  ASSIGN_OR_RETURN(std::vector<TrainingExample> retain, ops::train::TextExamples(tokenizer, spec.retain_texts, "retain text"));
  ASSIGN_OR_RETURN(std::vector<TrainingExample> holdout,
                   ops::train::TextExamples(tokenizer, spec.holdout_texts, "holdout text"));
  ASSIGN_OR_RETURN(deltas::PeftAdapter target, ReadVariantForJob(*registry_, spec.target));
  ops::train::LoraTrainerOptions options;
  options.rank = spec.rank;
  options.alpha = spec.lora_alpha;
  options.learning_rate = spec.learning_rate;
  options.total_steps = spec.steps;
  options.seed = spec.seed;
  ASSIGN_OR_RETURN(std::unique_ptr<ops::train::LoraTrainer> trainer,
                   ops::train::LoraTrainer::Create(registry_->model(), &target.deltas, options));

  RETURN_IF_ERROR(context.Step(0.0, "measuring the target"));
  ASSIGN_OR_RETURN(nlohmann::json before, Report(*trainer, tokenizer, forget, retain, holdout));
  // NPO's reference: the target's own sequence log-probabilities (the trainer starts there).
  std::vector<double> reference;
  {
    at::NoGradGuard no_grad;
    for (const TrainingExample& example : forget) {
      ASSIGN_OR_RETURN(ops::train::SequenceLosses losses, trainer->Losses({&example}));
      reference.push_back(-losses.nll_sums[0].item<double>());
    }
  }

  std::mt19937_64 random(spec.seed);
  auto sample = [&](const std::vector<TrainingExample>& texts, std::vector<size_t>& indexes) {
    std::vector<size_t> all(texts.size());
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), random);
    all.resize(std::min<size_t>(all.size(), spec.batch_size));
    indexes = all;
    std::vector<const TrainingExample*> batch;
    for (size_t index : all) batch.push_back(&texts[index]);
    return batch;
  };
  const double beta = Beta(spec);
  std::vector<double> losses;
  int64_t trained_tokens = 0;
  const auto started = std::chrono::steady_clock::now();
  double seconds = 0;
  for (int64_t step = 1; step <= spec.steps; ++step) {
    auto accumulate = [&]() -> absl::StatusOr<double> {
      std::vector<size_t> indexes;
      std::vector<const TrainingExample*> batch = sample(forget, indexes);
      ASSIGN_OR_RETURN(ops::train::SequenceLosses forget_losses, trainer->Losses(batch));
      trained_tokens += static_cast<int64_t>(forget_losses.target_counts.sum().item<double>());
      at::Tensor forget_loss;
      if (spec.method == "npo") {
        std::vector<double> chosen;
        for (size_t index : indexes) chosen.push_back(reference[index]);
        forget_loss = ops::unlearn::NpoLoss(-forget_losses.nll_sums,
                                            at::tensor(chosen, at::kFloat).to(forget_losses.nll_sums.device()), beta);
      } else if (spec.method == "simnpo") {
        forget_loss = ops::unlearn::SimNpoLoss(forget_losses.nll_sums, forget_losses.target_counts, beta, spec.delta);
      } else {
        forget_loss = -forget_losses.nll_sums.sum() / forget_losses.target_counts.sum();
      }
      at::Tensor loss = spec.forget_weight * forget_loss;
      if (spec.method != "grad_ascent" && !retain.empty()) {
        std::vector<size_t> ignored;
        ASSIGN_OR_RETURN(ops::train::SequenceLosses retain_losses, trainer->Losses(sample(retain, ignored)));
        trained_tokens += static_cast<int64_t>(retain_losses.target_counts.sum().item<double>());
        loss = loss + spec.retain_weight * retain_losses.nll_sums.sum() / retain_losses.target_counts.sum();
      }
      loss.backward();
      return loss.item<double>();
    };
    ASSIGN_OR_RETURN(ops::train::TrainingStep done, trainer->Step(accumulate));
    losses.push_back(done.loss);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    RETURN_IF_ERROR(
        context.Step(0.9 * step / spec.steps, TrainingProgress(step, spec.steps, done.loss, trained_tokens, seconds)));
  }
  RETURN_IF_ERROR(context.Step(0.9, "measuring the result"));
  ASSIGN_OR_RETURN(nlohmann::json after, Report(*trainer, tokenizer, forget, retain, holdout));

  nlohmann::json evaluation;
  evaluation["method"] = spec.method;
  evaluation["before"] = before;
  evaluation["after"] = after;
  evaluation["train_loss"] = {{"first", losses.front()}, {"last", losses.back()}};
  evaluation["steps"] = spec.steps;
  evaluation["tokens_per_second"] = trained_tokens / std::max(seconds, 1e-9);
  evaluation["forget_texts_sha256"] = TextsSha256(spec.forget_texts);
  if (!spec.retain_texts.empty()) evaluation["retain_texts_sha256"] = TextsSha256(spec.retain_texts);
  if (!spec.holdout_texts.empty()) evaluation["holdout_texts_sha256"] = TextsSha256(spec.holdout_texts);
  nlohmann::json recipe = nlohmann::json::parse(spec.ToJson());
  for (const char* texts : {"forget_texts", "retain_texts", "holdout_texts"}) {
    recipe[std::string(texts) + "_count"] = recipe[texts].size();
    recipe.erase(texts);
  }
  recipe["beta"] = beta;
  VariantLineage lineage{kUnlearnJobKind, {spec.target}, recipe.dump(), JobId(context.record().number),
                         evaluation.dump()};
  return PublishDeltas(*registry_, context, spec.output, trainer->Combined(), target.config.base_model_name_or_path,
                       lineage);
}

}  // namespace deltaserve::control
