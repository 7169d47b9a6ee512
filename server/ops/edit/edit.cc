#include "server/ops/edit/edit.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/ops/edit/memit.h"
#include "server/ops/edit/rome.h"
#include "server/ops/eval/edit_metrics.h"

namespace deltaserve::ops::edit {
namespace {

// A ridge of this fraction of C's mean diagonal keeps the solves well posed when the statistics
// have fewer keys than dimensions.
constexpr double kRidge = 1e-2;

at::Tensor Regularised(const at::Tensor& covariance) {
  const int64_t d = covariance.size(0);
  return covariance + kRidge * covariance.diagonal().mean() * at::eye(d, covariance.options());
}

// Effective: the target is the greedy continuation and beats the original answer (or is it).
bool Effective(const EditMeasures& measures) {
  return measures.efficacy && (measures.original_answer.empty() ||
                               eval::TargetMoreLikely(measures.target_log_prob, measures.original_log_prob));
}

// The keys of the lineage's earlier edits at each layer, as the parent computes them now.
absl::StatusOr<std::map<int64_t, at::Tensor>> EarlierKeys(const model::LlamaModel& model,
                                                          const model::Tokenizer& tokenizer,
                                                          const deltas::DeltaSet* parent, const EditOptions& options) {
  std::map<int64_t, at::Tensor> keys_by_layer;
  RETURN_IF_ERROR(common::CatchTorchErrors("reading the keys of earlier edits", [&] {
    for (int64_t layer : options.layers) {
      std::vector<at::Tensor> keys;
      for (const EditSpec& previous : options.earlier_edits) {
        absl::StatusOr<EditPrompts> prompts = PrepareEditPrompts(tokenizer, previous, options.context_prefixes);
        if (!prompts.ok()) continue;  // a recipe from another tokenizer's base cannot be replayed
        keys.push_back(ReadSubjectKeys(model, parent, *prompts, layer).mean_key);
      }
      if (!keys.empty()) keys_by_layer[layer] = at::stack(keys, 1);
    }
  }));
  return keys_by_layer;
}

}  // namespace

absl::StatusOr<EditMethod> ParseEditMethod(const std::string& name) {
  if (name == "rome") return EditMethod::kRome;
  if (name == "memit") return EditMethod::kMemit;
  if (name == "alphaedit") return EditMethod::kAlphaEdit;
  return absl::InvalidArgumentError(absl::StrCat("unknown edit method \"", name, "\": use rome, memit or alphaedit"));
}

const char* EditMethodName(EditMethod method) {
  switch (method) {
    case EditMethod::kRome: return "rome";
    case EditMethod::kMemit: return "memit";
    case EditMethod::kAlphaEdit: return "alphaedit";
  }
  return "?";
}

double DefaultMom2Weight(EditMethod method, const model::ModelConfig& config) {
  return method == EditMethod::kRome ? 1.0 : static_cast<double>(config.intermediate_size);
}

int64_t EditOutcome::Held() const { return std::count(holds.begin(), holds.end(), true); }

absl::StatusOr<EditOutcome> Edit(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                 const deltas::DeltaSet* parent, const std::vector<EditProbe>& probes,
                                 const EditOptions& options, const Progress& progress) {
  const model::ModelConfig& config = model.config();
  if (probes.empty()) return absl::InvalidArgumentError("no edits");
  if (options.layers.empty()) return absl::InvalidArgumentError("no layers to edit");
  if (options.method == EditMethod::kRome && options.layers.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("rome edits one layer; got ", options.layers.size(),
                                                   " (use memit or alphaedit for several)"));
  }
  if (options.repair_rounds < 0) return absl::InvalidArgumentError("repair_rounds must not be negative");
  const size_t n = probes.size();
  EditOutcome outcome;
  outcome.values.resize(n);

  // 1. The parent (0 to 0.15).
  for (size_t i = 0; i < n; ++i) {
    RETURN_IF_ERROR(Report(progress, 0.15 * i / n, absl::StrCat("measuring edit ", i + 1, "/", n, " before")));
    ASSIGN_OR_RETURN(outcome.before.emplace_back(), MeasureEdit(model, tokenizer, parent, probes[i], {}));
  }

  // The statistics each method solves with.
  std::map<int64_t, at::Tensor> covariances;
  RETURN_IF_ERROR(common::CatchTorchErrors("preparing the key statistics", [&] {
    for (const auto& [layer, covariance] : options.covariances) {
      // AlphaEdit's projector needs C's own small eigenvalues; the other solves the ridge.
      covariances[layer] = options.method == EditMethod::kAlphaEdit ? covariance : Regularised(covariance);
    }
  }));
  MemitOptions memit;
  if (options.method != EditMethod::kRome) {
    memit.layers = options.layers;
    memit.value = options.value;
    memit.mom2_weight = options.mom2_weight;
    memit.context_prefixes = options.context_prefixes;
    memit.alphaedit = options.method == EditMethod::kAlphaEdit;
    memit.null_space_threshold = options.null_space_threshold;
    memit.alphaedit_l2 = options.alphaedit_l2;
    if (memit.alphaedit && !options.earlier_edits.empty()) {
      ASSIGN_OR_RETURN(memit.previous_keys, EarlierKeys(model, tokenizer, parent, options));
    }
  }

  // 2-4. Update rounds (0.15 to 0.85): the first for every edit, repairs for those not holding.
  deltas::DeltaSet combined =
      parent != nullptr ? parent->To(model.device(), at::kFloat) : deltas::DeltaSet(config.num_hidden_layers);
  std::vector<bool> pending(n, true);
  const int64_t rounds = 1 + options.repair_rounds;
  for (int64_t round = 0; round < rounds; ++round) {
    const double from = 0.15 + 0.7 * round / rounds, share = 0.7 / rounds;
    const std::string what = round == 0 ? EditMethodName(options.method)
                                        : absl::StrCat(EditMethodName(options.method), " repair ", round);
    if (options.method == EditMethod::kRome) {
      const int64_t layer = options.layers.front();
      RomeOptions rome;
      rome.layer = layer;
      rome.value = options.value;
      rome.context_prefixes = options.context_prefixes;
      const at::Tensor covariance =
          options.mom2_weight > 0 && covariances.count(layer) ? covariances.at(layer) : at::Tensor();
      for (size_t i = 0; i < n; ++i) {
        if (!pending[i]) continue;
        RETURN_IF_ERROR(Report(progress, from + share * i / n, absl::StrCat(what, ": edit ", i + 1, "/", n)));
        // Each edit is computed on the parent plus every update before it.
        ASSIGN_OR_RETURN(RomeResult result, RomeEdit(model, tokenizer, &combined, probes[i].spec, rome, covariance));
        combined.Add(layer, model::Projection::kDown,
                     {result.update.a.to(at::kFloat), result.update.b.to(at::kFloat), result.update.scale});
        outcome.values[i] = result.value;
      }
    } else {
      RETURN_IF_ERROR(Report(progress, from, absl::StrCat(what, ": ", std::count(pending.begin(), pending.end(), true),
                                                          " edits over layers ", options.layers.front(), "-",
                                                          options.layers.back())));
      std::vector<EditSpec> specs;
      for (const EditProbe& probe : probes) specs.push_back(probe.spec);
      memit.keep.assign(n, false);
      for (size_t i = 0; i < n; ++i) memit.keep[i] = !pending[i];
      ASSIGN_OR_RETURN(MemitResult result, MemitEdit(model, tokenizer, &combined, specs, memit, covariances));
      combined.Append(result.deltas.To(model.device(), at::kFloat));
      for (size_t i = 0; i < n; ++i) {
        if (pending[i]) outcome.values[i] = result.values[i];
      }
    }
    ++outcome.rounds;
    // 3. The check, through what would be published.
    RETURN_IF_ERROR(common::CatchTorchErrors("casting the edit", [&] {
      outcome.deltas = combined.To(model.device(), model.dtype());
    }));
    bool all = true;
    for (size_t i = 0; i < n; ++i) {
      ASSIGN_OR_RETURN(EditMeasures check, MeasureEfficacy(model, tokenizer, &outcome.deltas, probes[i].spec,
                                                           outcome.before[i].original_answer));
      pending[i] = !Effective(check);
      all &= !pending[i];
    }
    if (all) break;
  }
  for (ValueShift& value : outcome.values) value.shift = at::Tensor();

  // 5. The final deltas, measured in full (0.85 to 1).
  for (size_t i = 0; i < n; ++i) {
    RETURN_IF_ERROR(Report(progress, 0.85 + 0.15 * i / n, absl::StrCat("measuring edit ", i + 1, "/", n, " after")));
    ASSIGN_OR_RETURN(outcome.after.emplace_back(),
                     MeasureEdit(model, tokenizer, &outcome.deltas, probes[i], outcome.before[i].original_answer));
    const EditMeasures& after = outcome.after.back();
    const double locality = probes[i].neighborhood_prompts.empty()
                                ? -1.0
                                : eval::UnchangedFraction(outcome.before[i].neighborhood_continuations,
                                                          after.neighborhood_continuations);
    outcome.locality.push_back(locality);
    outcome.holds.push_back(Effective(after) && (locality < 0 || locality >= options.min_locality));
  }
  return outcome;
}

}  // namespace deltaserve::ops::edit
