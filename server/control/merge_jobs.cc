#include "server/control/merge_jobs.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/control/job_artifacts.h"

namespace deltaserve::control {
namespace {

using ops::merge::MergeRecipe;

constexpr size_t kMaxInputs = 64;

// The share of a job's progress its phases take: reading inputs, merging, writing.
constexpr double kReadShare = 0.1;
constexpr double kMergeShare = 0.8;

std::string EvaluationJson(const MergeJobSpec& spec, const ops::merge::RecompressedDeltas& merged) {
  nlohmann::json evaluation;
  evaluation["method"] = spec.recipe.method;
  evaluation["exact"] = ops::merge::IsExactMerge(spec.recipe.method);
  nlohmann::json modules = nlohmann::json::array();
  double largest = 0.0, sum = 0.0;
  for (const ops::merge::ModuleError& error : merged.errors) {
    modules.push_back({{"layer", error.layer},
                       {"module", error.module},
                       {"rank_before", error.rank_before},
                       {"rank_after", error.rank_after},
                       {"relative_error", error.relative_error}});
    largest = std::max(largest, error.relative_error);
    sum += error.relative_error;
  }
  evaluation["max_relative_error"] = largest;
  evaluation["mean_relative_error"] = merged.errors.empty() ? 0.0 : sum / merged.errors.size();
  evaluation["modules"] = std::move(modules);
  return evaluation.dump();
}

// The distinct input names, in order: the output's parents.
std::vector<std::string> Parents(const MergeJobSpec& spec) {
  std::vector<std::string> parents;
  for (const MergeInputSpec& input : spec.inputs) {
    if (std::find(parents.begin(), parents.end(), input.variant) == parents.end()) parents.push_back(input.variant);
  }
  return parents;
}

// CheckOneBase: INVALID_ARGUMENT when inputs name different base models.
absl::Status CheckOneBase(const std::vector<std::pair<std::string, std::string>>& name_and_base) {
  std::string first_name, first_base;
  for (const auto& [name, base] : name_and_base) {
    if (base.empty()) continue;
    if (first_base.empty()) {
      first_name = name;
      first_base = base;
    } else if (base != first_base) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the inputs were trained on different base models: \"", first_name, "\" on \"", first_base, "\", \"",
          name, "\" on \"", base, "\"; only variants of one base can be merged"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string MergeJobSpec::ToJson() const {
  nlohmann::json json;
  nlohmann::json inputs_json = nlohmann::json::array();
  for (const MergeInputSpec& input : inputs) inputs_json.push_back({{"variant", input.variant}, {"weight", input.weight}});
  json["inputs"] = std::move(inputs_json);
  json["output"] = output;
  json["method"] = recipe.method;
  json["rank"] = recipe.rank;
  json["density"] = recipe.density;
  json["gamma"] = recipe.gamma;
  json["lambda"] = recipe.lambda;
  json["seed"] = recipe.seed;
  if (recipe.lines_alpha.has_value()) {
    json["lines_alpha"] = *recipe.lines_alpha;
    json["lines_beta"] = recipe.lines_beta;
  }
  return json.dump();
}

absl::StatusOr<MergeJobSpec> MergeJobSpec::FromJson(const std::string& text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return absl::InvalidArgumentError("a merge spec is not a JSON object");
  MergeJobSpec spec;
  try {
    for (const nlohmann::json& input : json.at("inputs")) {
      spec.inputs.push_back({input.at("variant").get<std::string>(), input.at("weight").get<double>()});
    }
    spec.output = json.at("output").get<std::string>();
    spec.recipe.method = json.at("method").get<std::string>();
    spec.recipe.rank = json.at("rank").get<int64_t>();
    spec.recipe.density = json.at("density").get<double>();
    spec.recipe.gamma = json.at("gamma").get<double>();
    spec.recipe.lambda = json.at("lambda").get<double>();
    spec.recipe.seed = json.at("seed").get<uint64_t>();
    if (json.contains("lines_alpha")) {
      spec.recipe.lines_alpha = json.at("lines_alpha").get<double>();
      spec.recipe.lines_beta = json.at("lines_beta").get<double>();
    }
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("a merge spec is malformed: ", error.what()));
  }
  return spec;
}

MergeJobs::MergeJobs(VariantRegistry* registry, JobRunner* runner)
    : registry_(registry),
      kind_(JobKind::kMerge, registry, runner, [this](const MergeJobSpec& spec) { return Check(spec); },
            [this](const MergeJobSpec& spec, JobContext& context) { return Run(spec, context); }) {}

absl::StatusOr<JobRecord> MergeJobs::Submit(MergeJobSpec spec, const std::string& idempotency_key) {
  return kind_.Submit(std::move(spec), idempotency_key);
}

absl::StatusOr<int64_t> MergeJobs::Check(const MergeJobSpec& spec) const {
  RETURN_IF_ERROR(CheckNewOutput(*registry_, spec.output));
  if (spec.inputs.empty()) return absl::InvalidArgumentError("a merge needs at least one input variant");
  if (spec.inputs.size() > kMaxInputs) {
    return absl::InvalidArgumentError(absl::StrCat("a merge takes at most ", kMaxInputs, " inputs, got ", spec.inputs.size()));
  }
  const model::LlamaModel& model = registry_->model();
  std::vector<std::pair<std::string, std::string>> bases;
  std::vector<int64_t> float32_bytes;
  int64_t summed_rank = 0, largest_rank = 0;
  for (const MergeInputSpec& input : spec.inputs) {
    if (!std::isfinite(input.weight)) {
      return absl::InvalidArgumentError(absl::StrCat("the weight of input \"", input.variant, "\" is not finite"));
    }
    if (input.variant.empty()) return absl::InvalidArgumentError("an input has no variant name");
    std::shared_ptr<const Variant> variant = registry_->Find(input.variant);
    if (variant == nullptr) {
      return absl::NotFoundError(absl::StrCat("input variant \"", input.variant, "\" does not exist"));
    }
    RETURN_IF_ERROR(CheckServable(*variant));
    bases.push_back({variant->name, variant->base_model});
    float32_bytes.push_back(variant->bytes / static_cast<int64_t>(at::elementSize(model.dtype())) * 4);
    int64_t rank = 0;
    for (const deltas::ModuleRank& module : variant->ranks) rank = std::max(rank, module.rank);
    summed_rank += rank;
    largest_rank = std::max(largest_rank, rank);
  }
  RETURN_IF_ERROR(CheckOneBase(bases));
  MergeRecipe recipe = spec.recipe;
  if (recipe.rank == 0) recipe.rank = largest_rank;
  RETURN_IF_ERROR(ops::merge::ValidateMergeRecipe(recipe));
  return ops::merge::EstimateMergeBytes(model.config(), recipe, float32_bytes, summed_rank);
}

absl::Status MergeJobs::Run(const MergeJobSpec& spec, JobContext& context) {
  // 1. The inputs, read again from their files (a variant deleted since Submit fails the job).
  std::vector<deltas::PeftAdapter> adapters;
  std::vector<std::pair<std::string, std::string>> bases;
  for (size_t i = 0; i < spec.inputs.size(); ++i) {
    const std::string& name = spec.inputs[i].variant;
    RETURN_IF_ERROR(context.Step(kReadShare * i / spec.inputs.size(), absl::StrCat("reading input \"", name, "\"")));
    ASSIGN_OR_RETURN(deltas::PeftAdapter adapter, ReadVariantForJob(*registry_, name));
    bases.push_back({name, adapter.config.base_model_name_or_path});
    adapters.push_back(std::move(adapter));
  }
  RETURN_IF_ERROR(CheckOneBase(bases));
  std::string base_model;
  for (const auto& [name, base] : bases) {
    if (!base.empty()) base_model = base;
  }

  // 2. The merge, a module at a time.
  MergeJobSpec done_spec = spec;  // as run: the default rank filled in
  std::vector<ops::merge::WeightedDeltas> inputs;
  for (size_t i = 0; i < adapters.size(); ++i) {
    inputs.push_back({&adapters[i].deltas, spec.inputs[i].weight});
    if (spec.recipe.rank == 0) {
      done_spec.recipe.rank = std::max(done_spec.recipe.rank, adapters[i].deltas.MaxRank());
    }
  }
  absl::StatusOr<ops::merge::RecompressedDeltas> merged;
  RETURN_IF_ERROR(common::CatchTorchErrors("the merge", [&] {
    merged = ops::merge::MergeVariants(inputs, done_spec.recipe, [&](int64_t done, int64_t total) {
      return context.Step(kReadShare + kMergeShare * done / std::max<int64_t>(total, 1),
                          absl::StrCat("merged ", done, " of ", total, " modules"));
    });
  }));
  if (!merged.ok()) return merged.status();
  adapters.clear();

  // 3. The output: written and synced in a staging directory, then published.
  RETURN_IF_ERROR(context.Step(kReadShare + kMergeShare, "writing the merged adapter"));
  VariantLineage lineage{JobKindName(JobKind::kMerge), Parents(spec), done_spec.ToJson(), JobId(context.record().number),
                         EvaluationJson(done_spec, *merged)};
  return PublishDeltas(*registry_, context, spec.output, merged->deltas, base_model, lineage);
}

}  // namespace deltaserve::control
