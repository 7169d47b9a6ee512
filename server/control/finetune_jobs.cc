#include "server/control/finetune_jobs.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/common/status_macros.h"
#include "server/control/job_artifacts.h"
#include "server/ops/train/finetune.h"

namespace deltaserve::control {
namespace {

using ops::train::TrainingExample;

constexpr size_t kMaxTexts = 100000;
constexpr int64_t kMaxSteps = 1000000;
constexpr int kCurvePoints = 10;

// Module names to projections; empty = all seven.
absl::StatusOr<std::vector<model::Projection>> Targets(const std::vector<std::string>& names) {
  std::vector<model::Projection> targets;
  for (int p = 0; p < deltas::kProjectionCount; ++p) {
    const auto projection = static_cast<model::Projection>(p);
    if (names.empty() || std::find(names.begin(), names.end(), deltas::ProjectionName(projection)) != names.end()) {
      targets.push_back(projection);
    }
  }
  for (const std::string& name : names) {
    bool known = false;
    for (int p = 0; p < deltas::kProjectionCount; ++p) known |= name == deltas::ProjectionName(static_cast<model::Projection>(p));
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown target module \"", name, "\": use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj"));
    }
  }
  return targets;
}

int64_t StepsFor(const FinetuneJobSpec& spec, size_t rows) {
  if (spec.steps > 0) return spec.steps;
  const int64_t batches = (static_cast<int64_t>(rows) + spec.batch_size - 1) / spec.batch_size;
  return std::max<int64_t>(1, spec.epochs * batches);
}

// The recipe recorded in the output's lineage: the spec with its data's sources, not the data.
std::string RecipeJson(const FinetuneJobSpec& spec, size_t rows) {
  nlohmann::json recipe = nlohmann::json::parse(spec.ToJson());
  for (const char* key : {"texts", "dataset", "dataset_sha256", "validation_texts", "validation_dataset",
                          "validation_dataset_sha256"}) {
    recipe.erase(key);
  }
  recipe["data"] = spec.train.Summary();
  recipe["rows"] = rows;
  if (!spec.validation.empty()) recipe["validation_data"] = spec.validation.Summary();
  recipe["steps"] = StepsFor(spec, rows);
  return recipe.dump();
}


}  // namespace

std::string FinetuneJobSpec::ToJson() const {
  nlohmann::json json;
  json["parent"] = parent;
  json["output"] = output;
  train.ToJson(json, "texts", "dataset");
  validation.ToJson(json, "validation_texts", "validation_dataset");
  json["rank"] = rank;
  json["alpha"] = alpha;
  json["target_modules"] = target_modules;
  json["steps"] = steps;
  json["epochs"] = epochs;
  json["learning_rate"] = learning_rate;
  json["batch_size"] = batch_size;
  json["micro_batch_size"] = micro_batch_size;
  json["warmup_steps"] = warmup_steps;
  json["seed"] = seed;
  return json.dump();
}

absl::StatusOr<FinetuneJobSpec> FinetuneJobSpec::FromJson(const std::string& text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return absl::InvalidArgumentError("a fine-tune spec is not a JSON object");
  FinetuneJobSpec spec;
  try {
    spec.parent = json.at("parent").get<std::string>();
    spec.output = json.at("output").get<std::string>();
    spec.train = TrainingData::FromJson(json, "texts", "dataset");
    spec.validation = TrainingData::FromJson(json, "validation_texts", "validation_dataset");
    spec.rank = json.at("rank").get<int64_t>();
    spec.alpha = json.at("alpha").get<double>();
    spec.target_modules = json.at("target_modules").get<std::vector<std::string>>();
    spec.steps = json.at("steps").get<int64_t>();
    spec.epochs = json.at("epochs").get<int64_t>();
    spec.learning_rate = json.at("learning_rate").get<double>();
    spec.batch_size = json.at("batch_size").get<int64_t>();
    spec.micro_batch_size = json.value("micro_batch_size", int64_t{0});
    spec.warmup_steps = json.at("warmup_steps").get<int64_t>();
    spec.seed = json.at("seed").get<uint64_t>();
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("a fine-tune spec is malformed: ", error.what()));
  }
  return spec;
}

FinetuneJobs::FinetuneJobs(VariantRegistry* registry, const DatasetStore* datasets, JobRunner* runner)
    : registry_(registry),
      datasets_(datasets),
      kind_(JobKind::kFinetune, registry, runner, [this](FinetuneJobSpec& spec) { return Check(spec); },
            [this](const FinetuneJobSpec& spec, JobContext& context) { return Run(spec, context); }) {}

absl::StatusOr<JobRecord> FinetuneJobs::Submit(FinetuneJobSpec spec, const std::string& idempotency_key) {
  return kind_.Submit(std::move(spec), idempotency_key);
}

absl::StatusOr<int64_t> FinetuneJobs::Check(FinetuneJobSpec& spec) const {
  RETURN_IF_ERROR(CheckNewOutput(*registry_, spec.output));
  if (!spec.parent.empty()) {
    std::shared_ptr<const Variant> parent = registry_->Find(spec.parent);
    if (parent == nullptr) return absl::NotFoundError(absl::StrCat("parent variant \"", spec.parent, "\" does not exist"));
    RETURN_IF_ERROR(CheckServable(*parent));
  }
  if (spec.train.empty()) return absl::InvalidArgumentError("a fine-tune needs training data: texts or a dataset");
  RETURN_IF_ERROR(spec.train.Resolve(*datasets_, "training", spec.output));
  RETURN_IF_ERROR(spec.validation.Resolve(*datasets_, "validation", spec.output));
  RETURN_IF_ERROR(CheckTrainingParameters(spec.rank, spec.learning_rate, spec.batch_size, spec.micro_batch_size));
  if (!(spec.alpha > 0)) return absl::InvalidArgumentError("alpha must be positive");
  if (spec.warmup_steps < 0) return absl::InvalidArgumentError("warmup_steps must not be negative");
  ASSIGN_OR_RETURN(std::vector<model::Projection> targets, Targets(spec.target_modules));
  const model::Tokenizer& tokenizer = registry_->tokenizer();
  ASSIGN_OR_RETURN(std::vector<TrainingExample> examples, spec.train.Examples(*datasets_, tokenizer, "training row"));
  RETURN_IF_ERROR(spec.validation.Examples(*datasets_, tokenizer, "validation row").status());
  if (examples.size() > kMaxTexts) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", kMaxTexts, " training rows, got ", examples.size()));
  }
  if (spec.steps < 0 || spec.epochs < 1 || StepsFor(spec, examples.size()) > kMaxSteps) {
    return absl::InvalidArgumentError(absl::StrCat("steps must be 0 (use epochs) to ", kMaxSteps, " and epochs at least 1"));
  }
  int64_t longest = 0;
  for (const TrainingExample& example : examples) longest = std::max<int64_t>(longest, example.token_ids.size());
  const int64_t micro_batch = std::min<int64_t>(MicroBatchSize(spec.batch_size, spec.micro_batch_size), static_cast<int64_t>(examples.size()));
  return ops::train::EstimateTrainingBytes(registry_->model().config(), targets, spec.rank, longest * micro_batch);
}

absl::Status FinetuneJobs::Run(const FinetuneJobSpec& spec, JobContext& context) {
  const model::LlamaModel& model = registry_->model();
  ASSIGN_OR_RETURN(std::vector<model::Projection> targets, Targets(spec.target_modules));
  const model::Tokenizer& tokenizer = registry_->tokenizer();
  ASSIGN_OR_RETURN(std::vector<TrainingExample> examples, spec.train.Examples(*datasets_, tokenizer, "training row"));
  ASSIGN_OR_RETURN(std::vector<TrainingExample> validation,
                   spec.validation.Examples(*datasets_, tokenizer, "validation row"));
  std::optional<deltas::PeftAdapter> parent;
  std::string base_model;
  if (!spec.parent.empty()) {
    ASSIGN_OR_RETURN(parent.emplace(), ReadVariantForJob(*registry_, spec.parent));
    base_model = parent->config.base_model_name_or_path;
  }
  const int64_t steps = StepsFor(spec, examples.size());
  ops::train::LoraTrainerOptions options;
  options.rank = spec.rank;
  options.alpha = spec.alpha;
  options.targets = targets;
  options.learning_rate = spec.learning_rate;
  options.warmup_steps = spec.warmup_steps;
  options.total_steps = steps;
  options.seed = spec.seed;

  ops::train::FinetuneOptions finetune;
  finetune.trainer = options;
  finetune.batch_size = spec.batch_size;
  finetune.micro_batch_size = MicroBatchSize(spec.batch_size, spec.micro_batch_size);
  ASSIGN_OR_RETURN(ops::train::FinetuneOutcome outcome,
                   ops::train::Finetune(model, parent ? &parent->deltas : nullptr, examples, validation, finetune,
                                        [&](double done, const std::string& message) {
                                          return context.Step(0.95 * done, message);
                                        }));
  const std::vector<double>& losses = outcome.losses;
  nlohmann::json evaluation;
  nlohmann::json curve = nlohmann::json::array();
  for (int point = 0; point < kCurvePoints; ++point) {
    const size_t index = std::min(losses.size() - 1, (losses.size() - 1) * point / (kCurvePoints - 1));
    curve.push_back({{"step", index + 1}, {"loss", losses[index]}});
  }
  evaluation["train_loss"] = {{"first", losses.front()},
                              {"last", losses.back()},
                              {"min", *std::min_element(losses.begin(), losses.end())},
                              {"curve", curve}};
  if (outcome.validation_before.has_value()) {
    evaluation["validation_loss"] = {{"before", *outcome.validation_before}, {"after", *outcome.validation_after}};
  }
  evaluation["steps"] = steps;
  evaluation["trained_tokens"] = outcome.trained_tokens;
  evaluation["tokens_per_second"] = outcome.trained_tokens / std::max(outcome.seconds, 1e-9);
  evaluation["data"] = spec.train.Summary();
  if (!spec.validation.empty()) evaluation["validation_data"] = spec.validation.Summary();

  std::vector<std::string> parents;
  if (!spec.parent.empty()) parents.push_back(spec.parent);
  VariantLineage lineage{JobKindName(JobKind::kFinetune), parents, RecipeJson(spec, examples.size()), JobId(context.record().number),
                         evaluation.dump()};
  return PublishDeltas(*registry_, context, spec.output, outcome.deltas, base_model, lineage);
}

}  // namespace deltaserve::control
