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
#include "server/ops/unlearn/unlearn.h"

namespace deltaserve::control {
namespace {

using ops::train::TrainingExample;

nlohmann::json RecallToJson(const ops::unlearn::Recall& recall) {
  nlohmann::json json = {{"forget_exact", recall.forget_exact}, {"forget_rouge_l", recall.forget_rouge_l}};
  if (recall.retain_exact) json["retain_exact"] = *recall.retain_exact;
  if (recall.retain_rouge_l) json["retain_rouge_l"] = *recall.retain_rouge_l;
  return json;
}

nlohmann::json MeasuresToJson(const ops::unlearn::UnlearnMeasures& measures) {
  nlohmann::json json = {{"forget_loss", measures.forget_loss}, {"forget_perplexity", std::exp(measures.forget_loss)},
                         {"recall", RecallToJson(measures.recall)}};
  if (measures.retain_loss) {
    json["retain_loss"] = *measures.retain_loss;
    json["retain_perplexity"] = std::exp(*measures.retain_loss);
  }
  if (measures.verbatim_rouge_l) json["verbatim_rouge_l"] = *measures.verbatim_rouge_l;
  if (measures.knowledge_rouge_l) json["knowledge_rouge_l"] = *measures.knowledge_rouge_l;
  if (measures.min_k_auc) json["min_k_auc"] = *measures.min_k_auc;
  return json;
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
  json["retain_loss"] = retain_loss;
  json["recall_metric"] = recall_metric;
  json["forget_recall_max"] = forget_recall_max;
  json["retain_floor"] = retain_floor;
  json["eval_every"] = eval_every;
  json["accept_partial"] = accept_partial;
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
    // Specs written before goal-directed unlearning get the defaults.
    spec.retain_loss = json.value("retain_loss", spec.retain_loss);
    spec.recall_metric = json.value("recall_metric", spec.recall_metric);
    spec.forget_recall_max = json.value("forget_recall_max", spec.forget_recall_max);
    spec.retain_floor = json.value("retain_floor", spec.retain_floor);
    spec.eval_every = json.value("eval_every", spec.eval_every);
    spec.accept_partial = json.value("accept_partial", false);
    spec.seed = json.at("seed").get<uint64_t>();
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("an unlearn spec is malformed: ", error.what()));
  }
  return spec;
}

UnlearnJobs::UnlearnJobs(VariantRegistry* registry, const DatasetStore* datasets, JobRunner* runner)
    : registry_(registry),
      datasets_(datasets),
      kind_(JobKind::kUnlearn, registry, runner, [this](UnlearnJobSpec& spec) { return Check(spec); },
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
  ASSIGN_OR_RETURN(const ops::unlearn::UnlearnMethod method, ops::unlearn::ParseUnlearnMethod(spec.method));
  if (spec.learning_rate == 0) spec.learning_rate = ops::unlearn::DefaultLearningRate(method);
  if (!(spec.beta > 0)) spec.beta = ops::unlearn::DefaultBeta(method);
  RETURN_IF_ERROR(ops::unlearn::ParseRetainLoss(spec.retain_loss).status());
  RETURN_IF_ERROR(ops::unlearn::ParseRecallMetric(spec.recall_metric).status());
  if (!(spec.forget_recall_max >= 0 && spec.forget_recall_max <= 1)) {
    return absl::InvalidArgumentError("forget_recall_max must lie between 0 and 1");
  }
  if (!(spec.retain_floor >= 0 && spec.retain_floor <= 1)) {
    return absl::InvalidArgumentError("retain_floor must lie between 0 and 1 (a fraction of the target's retain recall)");
  }
  if (spec.eval_every < 1 || spec.eval_every > 10000) return absl::InvalidArgumentError("eval_every must be 1 to 10000");
  if (spec.forget.empty()) return absl::InvalidArgumentError("the forget set is empty: give forget texts or a forget dataset");
  if (method == ops::unlearn::UnlearnMethod::kGradDiff && spec.retain.empty()) {
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
  ops::unlearn::UnlearnOptions options;
  ASSIGN_OR_RETURN(options.method, ops::unlearn::ParseUnlearnMethod(spec.method));
  ASSIGN_OR_RETURN(options.retain_loss, ops::unlearn::ParseRetainLoss(spec.retain_loss));
  ASSIGN_OR_RETURN(options.goal.metric, ops::unlearn::ParseRecallMetric(spec.recall_metric));
  options.goal.forget_max = spec.forget_recall_max;
  options.goal.retain_floor = spec.retain_floor;
  options.eval_every = spec.eval_every;
  options.trainer.rank = spec.rank;
  options.trainer.alpha = spec.lora_alpha;
  options.trainer.learning_rate = spec.learning_rate;
  options.trainer.total_steps = spec.steps;
  options.trainer.seed = spec.seed;
  options.batch_size = spec.batch_size;
  options.micro_batch_size = MicroBatchSize(spec.batch_size, spec.micro_batch_size);
  options.forget_weight = spec.forget_weight;
  options.retain_weight = spec.retain_weight;
  // Check resolves the default; a spec queued by an older version may still hold -1.
  options.beta = spec.beta > 0 ? spec.beta : ops::unlearn::DefaultBeta(options.method);
  options.delta = spec.delta;
  ASSIGN_OR_RETURN(ops::unlearn::UnlearnOutcome outcome,
                   ops::unlearn::Unlearn(registry_->model(), tokenizer, &target.deltas, forget, retain, holdout, options,
                                         [&](double done, const std::string& message) {
                                           return context.Step(0.95 * done, message);
                                         }));

  nlohmann::json evaluation;
  evaluation["method"] = spec.method;
  evaluation["before"] = MeasuresToJson(outcome.before);
  evaluation["after"] = MeasuresToJson(outcome.after);
  evaluation["goal"] = {{"recall_metric", spec.recall_metric},
                        {"forget_recall_max", spec.forget_recall_max},
                        {"retain_floor", spec.retain_floor},
                        {"met", outcome.goal_met},
                        {"forget_met", outcome.forget_met},
                        {"chosen_step", outcome.chosen_step}};
  nlohmann::json trajectory = nlohmann::json::array();
  for (const ops::unlearn::Checkpoint& checkpoint : outcome.trajectory) {
    nlohmann::json point = RecallToJson(checkpoint.recall);
    point["step"] = checkpoint.step;
    point["forget_met"] = checkpoint.forget_met;
    point["retain_met"] = checkpoint.retain_met;
    trajectory.push_back(point);
  }
  evaluation["trajectory"] = trajectory;
  if (!outcome.losses.empty()) evaluation["train_loss"] = {{"first", outcome.losses.front()}, {"last", outcome.losses.back()}};
  evaluation["steps"] = static_cast<int64_t>(outcome.losses.size());
  evaluation["seconds"] = outcome.seconds;
  evaluation["tokens_per_second"] = outcome.trained_tokens / std::max(outcome.seconds, 1e-9);
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
  recipe["beta"] = options.beta;
  context.SetReport(evaluation.dump());
  if (!outcome.goal_met && !spec.accept_partial) {
    const std::string metric = spec.recall_metric;
    const ops::unlearn::Recall& recall = outcome.after.recall;
    return absl::FailedPreconditionError(absl::StrCat(
        "the unlearning goal was not met within ", spec.steps, " steps, so nothing was published: ",
        outcome.forget_met ? "the forget goal was met, but the best retain recall ("
                           : "no checkpoint brought the forget recall to ",
        outcome.forget_met
            ? absl::StrCat(metric == "exact" ? recall.retain_exact.value_or(0) : recall.retain_rouge_l.value_or(0),
                           ") is below retain_floor ", spec.retain_floor, " of the target's")
            : absl::StrCat(spec.forget_recall_max, " (", metric, "; last ",
                           metric == "exact" ? recall.forget_exact : recall.forget_rouge_l, ")"),
        ". The job's report has the trajectory; try another method, more steps or a higher learning rate, "
        "or set accept_partial"));
  }
  // The parent is the exact version unlearned from when the name has had several.
  const bool versioned = spec.target.find('@') == std::string::npos && (spec.target_version > 1 || spec.replace_target);
  const std::string parent = versioned ? VariantCatalog::VersionName(spec.target, spec.target_version) : spec.target;
  VariantLineage lineage{JobKindName(JobKind::kUnlearn), {parent}, recipe.dump(), JobId(context.record().number), evaluation.dump()};
  Replacement replacement{spec.target_version, spec.keep_previous};
  return PublishDeltas(*registry_, context, spec.output, outcome.deltas, target.config.base_model_name_or_path,
                       lineage, spec.replace_target ? &replacement : nullptr);
}

}  // namespace deltaserve::control
