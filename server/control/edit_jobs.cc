#include "server/control/edit_jobs.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/control/job_artifacts.h"
#include "server/ops/edit/default_statistics_text.h"
#include "server/ops/edit/edit.h"
#include "server/ops/edit/edit_evaluation.h"
#include "server/ops/eval/edit_metrics.h"

namespace deltaserve::control {
namespace {

using ops::edit::EditMeasures;
using ops::edit::EditProbe;

constexpr size_t kMaxEdits = 1000;
constexpr size_t kMaxEvaluationPrompts = 100;
double Mom2Weight(const EditJobSpec& spec, ops::edit::EditMethod method, const model::ModelConfig& config) {
  return spec.mom2_weight >= 0 ? spec.mom2_weight : ops::edit::DefaultMom2Weight(method, config);
}

ops::edit::EditSpec Core(const EditFact& fact) { return {fact.prompt, fact.subject, fact.target}; }

nlohmann::json FactToJson(const EditFact& fact) {
  return {{"prompt", fact.prompt},
          {"subject", fact.subject},
          {"target", fact.target},
          {"paraphrases", fact.paraphrases},
          {"neighborhood_prompts", fact.neighborhood_prompts}};
}

nlohmann::json MeasuresToJson(const EditMeasures& measures) {
  nlohmann::json json = {{"efficacy", measures.efficacy},
                         {"target_more_likely", ops::eval::TargetMoreLikely(measures.target_log_prob,
                                                                            measures.original_log_prob)},
                         {"target_log_prob", measures.target_log_prob},
                         {"original_log_prob", measures.original_log_prob},
                         {"fluency", measures.fluency}};
  if (measures.generalisation >= 0) json["generalisation"] = measures.generalisation;
  return json;
}

// Evaluation: per edit and averaged, before and after.
nlohmann::json Evaluation(const model::Tokenizer& tokenizer, const std::vector<EditFact>& facts,
                          const std::vector<EditMeasures>& before, const std::vector<EditMeasures>& after) {
  nlohmann::json edits = nlohmann::json::array();
  struct Mean {
    double sum = 0;
    int count = 0;
    void Add(double value) { sum += value, ++count; }
    nlohmann::json Value() const { return count == 0 ? nlohmann::json() : nlohmann::json(sum / count); }
  };
  std::map<std::string, Mean> means;
  for (size_t i = 0; i < facts.size(); ++i) {
    const std::vector<int64_t>& original = before[i].original_answer;
    nlohmann::json edit = {{"subject", facts[i].subject},
                           {"target", facts[i].target},
                           {"original_answer", tokenizer.Decode(std::vector<int32_t>(original.begin(), original.end()))},
                           {"before", MeasuresToJson(before[i])},
                           {"after", MeasuresToJson(after[i])}};
    for (const auto& [when, measures] : {std::pair{"before", &before[i]}, std::pair{"after", &after[i]}}) {
      const std::string suffix = std::string("_") + when;
      means["efficacy" + suffix].Add(measures->efficacy ? 1 : 0);
      means["efficacy_score" + suffix].Add(
          ops::eval::TargetMoreLikely(measures->target_log_prob, measures->original_log_prob) ? 1 : 0);
      if (measures->generalisation >= 0) means["generalisation" + suffix].Add(measures->generalisation);
      means["fluency" + suffix].Add(measures->fluency);
    }
    if (!facts[i].neighborhood_prompts.empty()) {
      const double locality = ops::eval::UnchangedFraction(before[i].neighborhood_continuations,
                                                           after[i].neighborhood_continuations);
      edit["locality"] = locality;
      means["locality"].Add(locality);
    }
    edits.push_back(std::move(edit));
  }
  nlohmann::json mean = nlohmann::json::object();
  for (const auto& [name, value] : means) mean[name] = value.Value();
  return {{"edits", edits}, {"mean", mean}};
}

// The facts edited by the EDIT variants of a lineage, newest first: `name` and its ancestors
// (through any kind of variant: an adapter trained on an edit still carries it).
std::vector<ops::edit::EditSpec> LineageEdits(const VariantRegistry& registry, std::string name) {
  std::vector<ops::edit::EditSpec> edits;
  for (int depth = 0; depth < 64 && !name.empty(); ++depth) {
    std::shared_ptr<const Variant> variant = registry.Find(name);
    if (variant == nullptr) break;
    if (variant->lineage.kind == JobKindName(JobKind::kEdit)) {
      nlohmann::json recipe = nlohmann::json::parse(variant->lineage.recipe_json, nullptr, false);
      if (recipe.is_object() && recipe.contains("edits") && recipe["edits"].is_array()) {
        for (const nlohmann::json& edit : recipe["edits"]) {
          if (!edit.is_object()) continue;
          edits.push_back({edit.value("prompt", ""), edit.value("subject", ""), edit.value("target", "")});
        }
      }
    }
    name = variant->lineage.parents.empty() ? "" : variant->lineage.parents.front();
  }
  return edits;
}

absl::Status CheckValueOptions(const ops::edit::ValueShiftOptions& value) {
  if (value.steps < 1 || value.steps > 10000) return absl::InvalidArgumentError("v_steps must be 1 to 10000");
  for (const auto& [name, number] : {std::pair{"v_lr", value.learning_rate}, std::pair{"clamp_norm_factor", value.clamp_norm_factor}}) {
    if (!(number > 0) || !std::isfinite(number)) return absl::InvalidArgumentError(absl::StrCat(name, " must be positive"));
  }
  for (const auto& [name, number] : {std::pair{"v_weight_decay", value.weight_decay}, std::pair{"kl_factor", value.kl_factor},
                                     std::pair{"v_margin", value.margin}}) {
    if (!(number >= 0) || !std::isfinite(number)) return absl::InvalidArgumentError(absl::StrCat(name, " must not be negative"));
  }
  return absl::OkStatus();
}

// ForEachParameter calls `visit(name, field)` for every hyper-parameter of `spec` (field: an
// int64_t* for counts, a double* otherwise): the one list behind Parameters and SetParameter.
template <typename Spec, typename Visit>
void ForEachParameter(Spec& spec, Visit visit) {
  visit("v_steps", &spec.value.steps);
  visit("v_lr", &spec.value.learning_rate);
  visit("v_weight_decay", &spec.value.weight_decay);
  visit("v_margin", &spec.value.margin);
  visit("clamp_norm_factor", &spec.value.clamp_norm_factor);
  visit("kl_factor", &spec.value.kl_factor);
  visit("context_prefixes", &spec.context_prefixes);
  visit("context_tokens", &spec.context_tokens);
  visit("null_space_threshold", &spec.null_space_threshold);
  visit("alphaedit_l2", &spec.alphaedit_l2);
  visit("repair_rounds", &spec.repair_rounds);
  visit("min_locality", &spec.min_locality);
}

}  // namespace

std::map<std::string, double> EditJobSpec::Parameters() const {
  std::map<std::string, double> parameters;
  ForEachParameter(*this, [&](const char* name, const auto* field) { parameters[name] = static_cast<double>(*field); });
  return parameters;
}

absl::Status EditJobSpec::SetParameter(const std::string& name, double value) {
  std::vector<std::string> known;
  std::optional<absl::Status> result;
  ForEachParameter(*this, [&](const char* parameter, auto* field) {
    known.push_back(parameter);
    if (name != parameter) return;
    using Field = std::remove_pointer_t<decltype(field)>;
    if constexpr (std::is_integral_v<Field>) {
      if (value != std::floor(value) || std::abs(value) > 1e9) {
        result = absl::InvalidArgumentError(absl::StrCat("parameter ", name, " must be a whole number, got ", value));
        return;
      }
    }
    *field = static_cast<Field>(value);
    result = absl::OkStatus();
  });
  if (result.has_value()) return *result;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown edit parameter \"", name, "\": known are ", absl::StrJoin(known, ", ")));
}

std::vector<int64_t> EditLayers(const std::string& method, int64_t num_layers) {
  const int64_t last_usable = std::max<int64_t>(0, num_layers - 2);
  const int64_t first = std::min<int64_t>(last_usable, static_cast<int64_t>(0.15 * num_layers));
  if (method == "rome") return {first};
  const int64_t count = std::max<int64_t>(1, std::llround(5.0 * num_layers / 32.0));
  std::vector<int64_t> layers;
  for (int64_t layer = first; layer < first + count && layer <= last_usable; ++layer) layers.push_back(layer);
  return layers;
}

std::string EditJobSpec::ToJson() const {
  nlohmann::json json;
  json["parent"] = parent;
  json["output"] = output;
  json["method"] = method;
  json["edits"] = nlohmann::json::array();
  for (const EditFact& fact : edits) json["edits"].push_back(FactToJson(fact));
  json["layers"] = layers;
  json["mom2_weight"] = mom2_weight;
  covariance.ToJson(json, "covariance_texts", "covariance_dataset");
  for (const auto& [name, value] : Parameters()) json[name] = value;
  json["accept_partial"] = accept_partial;
  json["seed"] = seed;
  return json.dump();
}

absl::StatusOr<EditJobSpec> EditJobSpec::FromJson(const std::string& text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return absl::InvalidArgumentError("an edit spec is not a JSON object");
  EditJobSpec spec;
  try {
    spec.parent = json.at("parent").get<std::string>();
    spec.output = json.at("output").get<std::string>();
    spec.method = json.at("method").get<std::string>();
    for (const nlohmann::json& edit : json.at("edits")) {
      spec.edits.push_back({edit.at("prompt").get<std::string>(), edit.at("subject").get<std::string>(),
                            edit.at("target").get<std::string>(),
                            edit.at("paraphrases").get<std::vector<std::string>>(),
                            edit.at("neighborhood_prompts").get<std::vector<std::string>>()});
    }
    spec.layers = json.at("layers").get<std::vector<int64_t>>();
    spec.mom2_weight = json.at("mom2_weight").get<double>();
    spec.covariance = TrainingData::FromJson(json, "covariance_texts", "covariance_dataset");
    for (const auto& [name, unused] : spec.Parameters()) {
      if (!json.contains(name)) continue;  // a spec written before the parameter existed: its default
      if (absl::Status set = spec.SetParameter(name, json.at(name).get<double>()); !set.ok()) return set;
    }
    spec.accept_partial = json.value("accept_partial", false);
    spec.seed = json.at("seed").get<uint64_t>();
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("an edit spec is malformed: ", error.what()));
  }
  return spec;
}

std::string StatsJobSpec::ToJson() const {
  nlohmann::json json;
  json["layers"] = layers;
  covariance.ToJson(json, "covariance_texts", "covariance_dataset");
  return json.dump();
}

absl::StatusOr<StatsJobSpec> StatsJobSpec::FromJson(const std::string& text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return absl::InvalidArgumentError("a statistics spec is not a JSON object");
  StatsJobSpec spec;
  try {
    spec.layers = json.at("layers").get<std::vector<int64_t>>();
    spec.covariance = TrainingData::FromJson(json, "covariance_texts", "covariance_dataset");
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("a statistics spec is malformed: ", error.what()));
  }
  return spec;
}

EditJobs::EditJobs(VariantRegistry* registry, const DatasetStore* datasets, JobRunner* runner, EditJobsOptions options)
    : registry_(registry),
      datasets_(datasets),
      statistics_(std::move(options.statistics_dir), std::move(options.model_fingerprint)),
      edit_kind_(JobKind::kEdit, registry, runner, [this](EditJobSpec& spec) { return Check(spec); },
                 [this](const EditJobSpec& spec, JobContext& context) { return Run(spec, context); }),
      stats_kind_(JobKind::kStats, registry, runner, [this](StatsJobSpec& spec) { return Check(spec); },
                  [this](const StatsJobSpec& spec, JobContext& context) { return Run(spec, context); }) {}

absl::StatusOr<JobRecord> EditJobs::Submit(EditJobSpec spec, const std::string& idempotency_key) {
  return edit_kind_.Submit(std::move(spec), idempotency_key);
}

absl::StatusOr<JobRecord> EditJobs::Submit(StatsJobSpec spec, const std::string& idempotency_key) {
  return stats_kind_.Submit(std::move(spec), idempotency_key);
}

int64_t EditJobs::StatisticsBytes(size_t layers) const {
  const model::ModelConfig& config = registry_->model().config();
  const int64_t d = config.intermediate_size;
  // Per layer: the float32 sum and the float64 mean; a solve holds about three more float64
  // matrices of that size at a time; plus one prompt's forward with gradients.
  return static_cast<int64_t>(layers) * d * d * (4 + 8) + 3 * d * d * 8 + (int64_t{64} << 20);
}

absl::StatusOr<StatisticsSource> EditJobs::Source(const TrainingData& covariance) const {
  StatisticsSource source;
  if (covariance.dataset.empty()) {
    source.texts = ops::edit::DefaultStatisticsTexts();
    source.sha256 = TextsSha256(source.texts);
    return source;
  }
  ASSIGN_OR_RETURN(std::vector<ops::train::TrainingRow> rows, covariance.Rows(*datasets_));
  for (const ops::train::TrainingRow& row : rows) source.texts.push_back(row.prompt + row.completion);
  source.sha256 = covariance.dataset_sha256;
  return source;
}

absl::StatusOr<int64_t> EditJobs::Check(EditJobSpec& spec) const {
  RETURN_IF_ERROR(CheckNewOutput(*registry_, spec.output));
  if (!spec.parent.empty()) {
    std::shared_ptr<const Variant> parent = registry_->Find(spec.parent);
    if (parent == nullptr) return absl::NotFoundError(absl::StrCat("parent variant \"", spec.parent, "\" does not exist"));
    RETURN_IF_ERROR(CheckServable(*parent));
  }
  RETURN_IF_ERROR(ops::edit::ParseEditMethod(spec.method).status());
  if (spec.edits.empty()) return absl::InvalidArgumentError("no edits: give at least one {prompt, subject, target}");
  if (spec.edits.size() > kMaxEdits) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", kMaxEdits, " edits per job, got ", spec.edits.size()));
  }
  const model::ModelConfig& config = registry_->model().config();
  if (spec.layers.empty()) spec.layers = EditLayers(spec.method, config.num_hidden_layers);
  for (int64_t layer : spec.layers) RETURN_IF_ERROR(ops::edit::CheckLayer(config, layer));
  if (spec.method == "rome" && spec.layers.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("rome edits one layer; got ", spec.layers.size(),
                                                   " (use memit or alphaedit for several)"));
  }
  for (size_t i = 1; i < spec.layers.size(); ++i) {
    if (spec.layers[i] != spec.layers[i - 1] + 1) {
      return absl::InvalidArgumentError("layers must be ascending and consecutive, e.g. 4,5,6");
    }
  }
  const model::Tokenizer& tokenizer = registry_->tokenizer();
  for (size_t i = 0; i < spec.edits.size(); ++i) {
    const EditFact& fact = spec.edits[i];
    auto where = [&](const absl::Status& status) {
      return absl::Status(status.code(), absl::StrCat("edit ", i + 1, ": ", status.message()));
    };
    if (absl::Status prepared = ops::edit::PrepareEdit(tokenizer, Core(fact)).status(); !prepared.ok()) {
      return where(prepared);
    }
    if (fact.paraphrases.size() + fact.neighborhood_prompts.size() > kMaxEvaluationPrompts) {
      return where(absl::InvalidArgumentError(
          absl::StrCat("at most ", kMaxEvaluationPrompts, " paraphrases and neighbourhood prompts per edit")));
    }
    for (const std::string& paraphrase : fact.paraphrases) {
      const ops::edit::EditSpec probe = ops::edit::ParaphraseSpec(Core(fact), paraphrase);
      if (absl::Status prepared = ops::edit::PrepareEdit(tokenizer, probe).status(); !prepared.ok()) {
        return where(absl::InvalidArgumentError(absl::StrCat("paraphrase \"", paraphrase, "\": ", prepared.message())));
      }
    }
    for (const std::string& prompt : fact.neighborhood_prompts) {
      if (prompt.empty()) return where(absl::InvalidArgumentError("a neighbourhood prompt is empty"));
    }
  }
  RETURN_IF_ERROR(CheckValueOptions(spec.value));
  if (!std::isfinite(spec.mom2_weight)) return absl::InvalidArgumentError("mom2_weight must be finite");
  if (spec.context_prefixes < 0 || spec.context_prefixes > 50 || spec.context_tokens < 1 || spec.context_tokens > 100) {
    return absl::InvalidArgumentError("context_prefixes must be 0 to 50 and context_tokens 1 to 100");
  }
  if (!(spec.null_space_threshold > 0 && spec.null_space_threshold < 1)) {
    return absl::InvalidArgumentError("null_space_threshold must lie between 0 and 1");
  }
  if (!(spec.alphaedit_l2 >= 0) || !std::isfinite(spec.alphaedit_l2)) {
    return absl::InvalidArgumentError("alphaedit_l2 must not be negative");
  }
  if (spec.repair_rounds < 0 || spec.repair_rounds > 20) return absl::InvalidArgumentError("repair_rounds must be 0 to 20");
  if (!(spec.min_locality >= 0 && spec.min_locality <= 1)) {
    return absl::InvalidArgumentError("min_locality must lie between 0 and 1");
  }
  if (!spec.covariance.texts.empty()) return absl::InvalidArgumentError("statistics come from a dataset, not texts");
  RETURN_IF_ERROR(spec.covariance.Resolve(*datasets_, "covariance", spec.output));
  return StatisticsBytes(spec.layers.size());
}

absl::StatusOr<int64_t> EditJobs::Check(StatsJobSpec& spec) const {
  const model::ModelConfig& config = registry_->model().config();
  if (spec.layers.empty()) {
    for (const char* method : {"rome", "memit"}) {
      for (int64_t layer : EditLayers(method, config.num_hidden_layers)) {
        if (std::find(spec.layers.begin(), spec.layers.end(), layer) == spec.layers.end()) spec.layers.push_back(layer);
      }
    }
    std::sort(spec.layers.begin(), spec.layers.end());
  }
  for (int64_t layer : spec.layers) RETURN_IF_ERROR(ops::edit::CheckLayer(config, layer));
  if (!spec.covariance.texts.empty()) return absl::InvalidArgumentError("statistics come from a dataset, not texts");
  RETURN_IF_ERROR(spec.covariance.Resolve(*datasets_, "statistics", spec.output));
  return StatisticsBytes(spec.layers.size());
}

absl::Status EditJobs::Run(const StatsJobSpec& spec, JobContext& context) {
  ASSIGN_OR_RETURN(StatisticsSource source, Source(spec.covariance));
  ASSIGN_OR_RETURN(KeyStatistics statistics,
                   statistics_.Ensure(registry_->model(), registry_->tokenizer(), spec.layers, source,
                                      [&](int64_t done, int64_t total) {
                                        return context.Step(0.99 * done / total,
                                                            absl::StrCat("statistics: text ", done, "/", total));
                                      }));
  const std::string name = spec.covariance.dataset.empty() ? "the built-in text" : spec.covariance.dataset;
  context.SetResult(absl::StrCat("statistics of layers ", absl::StrJoin(spec.layers, ","), " over ", name, ": ",
                                 statistics.computed.empty() ? "all cached" : absl::StrCat("computed ", absl::StrJoin(statistics.computed, ",")),
                                 statistics.reused.empty() ? "" : absl::StrCat(", reused ", absl::StrJoin(statistics.reused, ",")),
                                 " (", statistics.keys.begin()->second, " keys)"));
  return absl::OkStatus();
}

absl::Status EditJobs::Run(const EditJobSpec& spec, JobContext& context) {
  const model::LlamaModel& model = registry_->model();
  const model::Tokenizer& tokenizer = registry_->tokenizer();
  const model::ModelConfig& config = model.config();
  const auto started = std::chrono::steady_clock::now();
  std::optional<deltas::PeftAdapter> parent;
  std::string base_model;
  if (!spec.parent.empty()) {
    ASSIGN_OR_RETURN(parent.emplace(), ReadVariantForJob(*registry_, spec.parent));
    base_model = parent->config.base_model_name_or_path;
  }
  const deltas::DeltaSet* parent_deltas = parent ? &parent->deltas : nullptr;

  ops::edit::EditOptions options;
  ASSIGN_OR_RETURN(options.method, ops::edit::ParseEditMethod(spec.method));
  options.layers = spec.layers;
  options.value = spec.value;
  options.mom2_weight = Mom2Weight(spec, options.method, config);
  options.null_space_threshold = spec.null_space_threshold;
  options.alphaedit_l2 = spec.alphaedit_l2;
  options.repair_rounds = spec.repair_rounds;
  options.min_locality = spec.min_locality;
  // Key statistics (progress 0 to 0.3).
  KeyStatistics statistics;
  if (options.mom2_weight > 0) {
    ASSIGN_OR_RETURN(StatisticsSource source, Source(spec.covariance));
    ASSIGN_OR_RETURN(statistics, statistics_.Ensure(model, tokenizer, spec.layers, source, [&](int64_t done, int64_t total) {
      return context.Step(0.3 * done / total, absl::StrCat("statistics: text ", done, "/", total));
    }));
    options.covariances = statistics.covariances;
  }
  ASSIGN_OR_RETURN(options.context_prefixes,
                   ops::edit::ContextPrefixes(model, tokenizer, parent_deltas, spec.context_prefixes,
                                              spec.context_tokens, spec.seed));
  if (options.method == ops::edit::EditMethod::kAlphaEdit && !spec.parent.empty()) {
    options.earlier_edits = LineageEdits(*registry_, spec.parent);
  }
  std::vector<EditProbe> probes;
  for (const EditFact& fact : spec.edits) probes.push_back({Core(fact), fact.paraphrases, fact.neighborhood_prompts});

  // The edit, checked and repaired (0.3 to 0.95).
  ASSIGN_OR_RETURN(ops::edit::EditOutcome outcome,
                   ops::edit::Edit(model, tokenizer, parent_deltas, probes, options,
                                   [&](double done, const std::string& message) {
                                     return context.Step(0.3 + 0.65 * done, message);
                                   }));

  nlohmann::json evaluation = Evaluation(tokenizer, spec.edits, outcome.before, outcome.after);
  for (size_t i = 0; i < spec.edits.size(); ++i) {
    nlohmann::json& edit = evaluation["edits"][i];
    const ops::edit::ValueShift& value = outcome.values[i];
    edit["holds"] = static_cast<bool>(outcome.holds[i]);
    edit["value_nll"] = value.final_nll;
    edit["value_margin"] = value.final_margin;
    edit["value_steps"] = value.steps;
    edit["value_reached"] = value.reached;
  }
  evaluation["held"] = outcome.Held();
  evaluation["rounds"] = outcome.rounds;
  evaluation["method"] = spec.method;
  evaluation["layers"] = spec.layers;
  evaluation["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (options.mom2_weight > 0) {
    evaluation["statistics"] = {{"reused_layers", statistics.reused}, {"computed_layers", statistics.computed}};
  }
  context.SetReport(evaluation.dump());
  if (outcome.Held() < static_cast<int64_t>(spec.edits.size()) && !spec.accept_partial) {
    std::vector<std::string> missed;
    for (size_t i = 0; i < spec.edits.size(); ++i) {
      if (outcome.holds[i]) continue;
      const EditMeasures& after = outcome.after[i];
      const std::string why = !after.efficacy ? "the target is not the greedy answer"
                              : !ops::eval::TargetMoreLikely(after.target_log_prob, after.original_log_prob)
                                  ? "the original answer is still more likely"
                                  : absl::StrCat("locality ", outcome.locality[i], " < min_locality ", spec.min_locality);
      missed.push_back(absl::StrCat(i + 1, " (", spec.edits[i].subject, " ->", spec.edits[i].target, ": ", why, ")"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat(missed.size(), " of ", spec.edits.size(), " edits do not hold after ", outcome.rounds,
                     " update rounds, so nothing was published: edit ", absl::StrJoin(missed, "; edit "),
                     ". The job's report has the per-edit evaluation; set accept_partial to publish anyway"));
  }
  nlohmann::json recipe = nlohmann::json::parse(spec.ToJson());
  for (const char* key : {"covariance_texts", "covariance_dataset", "covariance_dataset_sha256"}) recipe.erase(key);
  recipe["mom2_weight"] = options.mom2_weight;
  if (options.mom2_weight > 0) {
    recipe["statistics"] = spec.covariance.dataset.empty()
                               ? nlohmann::json{{"builtin_text", true}, {"sha256", TextsSha256(ops::edit::DefaultStatisticsTexts())}}
                               : spec.covariance.Summary();
  }
  std::vector<std::string> parents;
  if (!spec.parent.empty()) parents.push_back(spec.parent);
  VariantLineage lineage{JobKindName(JobKind::kEdit), parents, recipe.dump(), JobId(context.record().number), evaluation.dump()};
  return PublishDeltas(*registry_, context, spec.output, outcome.deltas, base_model, lineage);
}

}  // namespace deltaserve::control
