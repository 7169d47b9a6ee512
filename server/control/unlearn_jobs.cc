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
  // Memorisation: the greedy continuation of a prompt against the true continuation — each
  // plain row's first half against its second half (verbatim), each prompt/completion row's
  // prompt against its completion (knowledge).
  auto continuation_rouge = [&](const TrainingExample& example, size_t split) -> absl::StatusOr<double> {
    std::vector<int64_t> prompt(example.token_ids.begin(), example.token_ids.begin() + split);
    std::vector<int32_t> truth(example.token_ids.begin() + split, example.token_ids.end());
    ASSIGN_OR_RETURN(std::vector<int64_t> continuation,
                     trainer.GreedyContinuation(prompt, static_cast<int64_t>(truth.size())));
    return ops::eval::RougeLF1(tokenizer.Decode(std::vector<int32_t>(continuation.begin(), continuation.end())),
                               tokenizer.Decode(truth));
  };
  double verbatim = 0, knowledge = 0;
  int verbatim_rows = 0, knowledge_rows = 0;
  for (const TrainingExample& example : forget) {
    if (example.from_prompt_completion) {
      const size_t prompt_tokens = example.token_ids.size() - ops::train::TargetCount(example);
      ASSIGN_OR_RETURN(double rouge, continuation_rouge(example, prompt_tokens));
      knowledge += rouge;
      ++knowledge_rows;
    } else {
      ASSIGN_OR_RETURN(double rouge, continuation_rouge(example, std::max<size_t>(2, example.token_ids.size() / 2)));
      verbatim += rouge;
      ++verbatim_rows;
    }
  }
  if (verbatim_rows > 0) report["verbatim_rouge_l"] = verbatim / verbatim_rows;
  if (knowledge_rows > 0) report["knowledge_rouge_l"] = knowledge / knowledge_rows;
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
  json["target_version"] = target_version;
  json["output"] = output;
  json["replace_target"] = replace_target;
  json["keep_previous"] = keep_previous;
  json["method"] = method;
  forget.ToJson(json, "forget_texts", "forget_dataset");
  retain.ToJson(json, "retain_texts", "retain_dataset");
  holdout.ToJson(json, "holdout_texts", "holdout_dataset");
  json["rank"] = rank;
  json["lora_alpha"] = lora_alpha;
  json["steps"] = steps;
  json["learning_rate"] = learning_rate;
  json["batch_size"] = batch_size;
  json["micro_batch_size"] = micro_batch_size;
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
    spec.target_version = json.value("target_version", int64_t{0});
    spec.output = json.at("output").get<std::string>();
    spec.replace_target = json.value("replace_target", false);
    spec.keep_previous = json.value("keep_previous", false);
    spec.method = json.at("method").get<std::string>();
    spec.forget = TrainingData::FromJson(json, "forget_texts", "forget_dataset");
    spec.retain = TrainingData::FromJson(json, "retain_texts", "retain_dataset");
    spec.holdout = TrainingData::FromJson(json, "holdout_texts", "holdout_dataset");
    spec.rank = json.at("rank").get<int64_t>();
    spec.lora_alpha = json.at("lora_alpha").get<double>();
    spec.steps = json.at("steps").get<int64_t>();
    spec.learning_rate = json.at("learning_rate").get<double>();
    spec.batch_size = json.at("batch_size").get<int64_t>();
    spec.micro_batch_size = json.value("micro_batch_size", int64_t{0});
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

UnlearnJobs::UnlearnJobs(VariantRegistry* registry, const DatasetStore* datasets, JobRunner* runner)
    : registry_(registry),
      datasets_(datasets),
      kind_(kUnlearnJobKind, registry, runner, [this](UnlearnJobSpec& spec) { return Check(spec); },
            [this](const UnlearnJobSpec& spec, JobContext& context) { return Run(spec, context); }) {}

absl::StatusOr<JobRecord> UnlearnJobs::Submit(UnlearnJobSpec spec, const std::string& idempotency_key) {
  return kind_.Submit(std::move(spec), idempotency_key);
}

absl::StatusOr<int64_t> UnlearnJobs::Check(UnlearnJobSpec& spec) const {
  if (spec.target.empty()) return absl::InvalidArgumentError("target is required: the variant to unlearn from");
  std::shared_ptr<const Variant> target = registry_->Find(spec.target);
  if (target == nullptr) return absl::NotFoundError(absl::StrCat("target variant \"", spec.target, "\" does not exist"));
  RETURN_IF_ERROR(CheckServable(*target));
  spec.target_version = target->version;
  const bool kept_version = spec.target.find('@') != std::string::npos;
  if (spec.replace_target) {
    if (kept_version) {
      return absl::InvalidArgumentError(absl::StrCat("\"", spec.target, "\" is a kept version; replace_target switches ",
                                                     "names, so unlearn into a new output instead"));
    }
    if (spec.output.empty()) spec.output = spec.target;
    if (spec.output != spec.target) {
      return absl::InvalidArgumentError(absl::StrCat("with replace_target the output is the target (\"", spec.target,
                                                     "\"); leave output empty"));
    }
    if (!registry_->store()->GetVariant(spec.target).ok()) {
      return absl::FailedPreconditionError(absl::StrCat("variant \"", spec.target, "\" is not in the catalog (it comes ",
                                                        "from --adapter-dir), so replace_target cannot switch it"));
    }
  } else {
    if (spec.keep_previous) return absl::InvalidArgumentError("keep_previous applies only with replace_target");
    RETURN_IF_ERROR(CheckNewOutput(*registry_, spec.output));
  }
  if (!KnownMethod(spec.method)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown unlearning method \"", spec.method, "\": use grad_ascent, grad_diff, npo or simnpo"));
  }
  if (spec.forget.empty()) return absl::InvalidArgumentError("the forget set is empty: give forget texts or a forget dataset");
  if (spec.method == "grad_diff" && spec.retain.empty()) {
    return absl::InvalidArgumentError("grad_diff needs a retain set: retain texts or a retain dataset");
  }
  RETURN_IF_ERROR(spec.forget.Resolve(*datasets_, "forget", spec.output));
  RETURN_IF_ERROR(spec.retain.Resolve(*datasets_, "retain", spec.output));
  RETURN_IF_ERROR(spec.holdout.Resolve(*datasets_, "holdout", spec.output));
  RETURN_IF_ERROR(CheckTrainingParameters(spec.rank, spec.learning_rate, spec.batch_size, spec.micro_batch_size));
  if (spec.steps < 1 || spec.steps > 100000) return absl::InvalidArgumentError("steps must be 1 to 100000");
  if (!std::isfinite(spec.forget_weight) || !std::isfinite(spec.retain_weight) || !std::isfinite(spec.delta)) {
    return absl::InvalidArgumentError("weights and delta must be finite");
  }
  const model::Tokenizer& tokenizer = registry_->tokenizer();
  int64_t longest = 0;
  for (const auto& [data, what] : {std::pair{&spec.forget, "forget row"}, std::pair{&spec.retain, "retain row"},
                                   std::pair{&spec.holdout, "holdout row"}}) {
    ASSIGN_OR_RETURN(std::vector<TrainingExample> examples, data->Examples(*datasets_, tokenizer, what));
    for (const TrainingExample& example : examples) longest = std::max<int64_t>(longest, example.token_ids.size());
  }
  // One micro-batch of the longest rows is alive at a time (forget and retain ones each run
  // their own backward pass).
  const model::ModelConfig& config = registry_->model().config();
  std::vector<model::Projection> all;
  for (int p = 0; p < deltas::kProjectionCount; ++p) all.push_back(static_cast<model::Projection>(p));
  return ops::train::EstimateTrainingBytes(config, all, spec.rank, longest * MicroBatchSize(spec.batch_size, spec.micro_batch_size));
}

absl::Status UnlearnJobs::Run(const UnlearnJobSpec& spec, JobContext& context) {
  const model::Tokenizer& tokenizer = registry_->tokenizer();
  ASSIGN_OR_RETURN(std::vector<TrainingExample> forget, spec.forget.Examples(*datasets_, tokenizer, "forget row"));
  ASSIGN_OR_RETURN(std::vector<TrainingExample> retain, spec.retain.Examples(*datasets_, tokenizer, "retain row"));
  ASSIGN_OR_RETURN(std::vector<TrainingExample> holdout, spec.holdout.Examples(*datasets_, tokenizer, "holdout row"));
  std::shared_ptr<const Variant> current = registry_->Find(spec.target);
  if (current != nullptr && spec.target_version > 0 && current->version != spec.target_version) {
    return absl::AbortedError(absl::StrCat("variant \"", spec.target, "\" became version ", current->version,
                                           " after the job was submitted for version ", spec.target_version));
  }
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
    // The step's loss over one sampled forget batch (and retain batch), accumulated over
    // micro-batches: per-sequence means weighted by each micro-batch's share of its batch,
    // per-token means divided by the batch's target tokens.
    auto accumulate = [&]() -> absl::StatusOr<double> {
      std::vector<size_t> indexes;
      std::vector<const TrainingExample*> batch = sample(forget, indexes);
      int64_t forget_targets = 0;
      for (const TrainingExample* example : batch) forget_targets += ops::train::TargetCount(*example);
      double total = 0;
      size_t offset = 0;
      for (const auto& micro : ops::train::MicroBatches(batch, MicroBatchSize(spec.batch_size, spec.micro_batch_size))) {
        ASSIGN_OR_RETURN(ops::train::SequenceLosses losses, trainer->Losses(micro));
        const double share = static_cast<double>(micro.size()) / batch.size();
        at::Tensor forget_loss;
        if (spec.method == "npo") {
          std::vector<double> chosen;
          for (size_t i = 0; i < micro.size(); ++i) chosen.push_back(reference[indexes[offset + i]]);
          forget_loss = share * ops::unlearn::NpoLoss(-losses.nll_sums,
                                                      at::tensor(chosen, at::kFloat).to(losses.nll_sums.device()), beta);
        } else if (spec.method == "simnpo") {
          forget_loss = share * ops::unlearn::SimNpoLoss(losses.nll_sums, losses.target_counts, beta, spec.delta);
        } else {
          forget_loss = -losses.nll_sums.sum() / static_cast<double>(std::max<int64_t>(forget_targets, 1));
        }
        offset += micro.size();
        at::Tensor loss = spec.forget_weight * forget_loss;
        loss.backward();
        total += loss.item<double>();
      }
      trained_tokens += forget_targets;
      if (spec.method != "grad_ascent" && !retain.empty()) {
        std::vector<size_t> ignored;
        std::vector<const TrainingExample*> retain_batch = sample(retain, ignored);
        int64_t retain_targets = 0;
        for (const TrainingExample* example : retain_batch) retain_targets += ops::train::TargetCount(*example);
        for (const auto& micro : ops::train::MicroBatches(retain_batch, MicroBatchSize(spec.batch_size, spec.micro_batch_size))) {
          ASSIGN_OR_RETURN(ops::train::SequenceLosses losses, trainer->Losses(micro));
          at::Tensor loss = spec.retain_weight * losses.nll_sums.sum() / static_cast<double>(std::max<int64_t>(retain_targets, 1));
          loss.backward();
          total += loss.item<double>();
        }
        trained_tokens += retain_targets;
      }
      return total;
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
  // The sources and sha256 of the data, never the data.
  nlohmann::json recipe = nlohmann::json::parse(spec.ToJson());
  for (const auto& [role, data] : {std::pair{"forget", &spec.forget}, std::pair{"retain", &spec.retain},
                                   std::pair{"holdout", &spec.holdout}}) {
    const std::string key(role);
    for (const std::string& field : {key + "_texts", key + "_dataset", key + "_dataset_sha256"}) recipe.erase(field);
    if (data->empty()) continue;
    evaluation[key + "_data"] = data->Summary();
    recipe[key + "_data"] = data->Summary();
  }
  recipe["beta"] = beta;
  // The parent is the exact version unlearned from when the name has had several.
  const bool versioned = spec.target.find('@') == std::string::npos && (spec.target_version > 1 || spec.replace_target);
  const std::string parent = versioned ? VariantCatalog::VersionName(spec.target, spec.target_version) : spec.target;
  VariantLineage lineage{kUnlearnJobKind, {parent}, recipe.dump(), JobId(context.record().number), evaluation.dump()};
  Replacement replacement{spec.target_version, spec.keep_previous};
  return PublishDeltas(*registry_, context, spec.output, trainer->Combined(), target.config.base_model_name_or_path,
                       lineage, spec.replace_target ? &replacement : nullptr);
}

}  // namespace deltaserve::control
