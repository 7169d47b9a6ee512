// EditJobs: knowledge edits as jobs (the EDIT kind of the JobRunner), and the key statistics they
// need (the STATS kind).
//   - An EDIT job rewrites facts "prompt with {subject} -> target" of a parent variant (or the
//     base) with ROME (one rank-1 delta per edit, applied one after another), MEMIT (one batch
//     over a range of layers) or AlphaEdit (MEMIT projected onto the null space of the
//     preserved keys, and of the keys of the earlier edits in the parent's lineage). Submit
//     checks everything it can at once: output name, parent, method, layers in range, every
//     edit's prompt/subject/target (the subject must survive tokenization), hyper-parameters,
//     the covariance dataset. Layers default by the base's depth (EditLayers). When
//     mom2_weight > 0 the job reads the key statistics of its layers from the cache, or collects
//     the missing ones first (KeyStatisticsCache). It measures each edit before and after
//     (EditEvaluation: efficacy, the target against the original answer, generalisation on
//     paraphrases, locality on neighbourhood prompts, fluency). The algorithm is
//     ops::edit::Edit: value optimisation until a margin, the update, a check of every edit
//     through the exact deltas to publish, and repair rounds for edits that do not hold. When
//     every edit holds (or accept_partial) it publishes the parent's factors followed by the
//     edit's as one EDIT variant, whose lineage holds the parent, the recipe with the edits
//     themselves, and the evaluation; otherwise the job FAILS with FAILED_PRECONDITION naming
//     the edits that do not hold, publishes nothing, and keeps the evaluation as its report.
//   - A STATS job collects (or finds cached) the statistics of some layers over a dataset or
//     the built-in text, for later edits; it has no output variant, and reports what it did in
//     its final message.
// Thread-safe; the registry, datasets and runner must outlive it.
//   EditJobs edits(registry.get(), datasets.get(), runner.get(), {data_dir + "/stats", fingerprint});
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/control/dataset_store.h"
#include "server/control/job_runner.h"
#include "server/control/key_statistics_cache.h"
#include "server/control/spec_job_kind.h"
#include "server/control/training_data.h"
#include "server/control/variant_registry.h"
#include "server/ops/edit/subject_values.h"

namespace deltaserve::control {

struct EditFact {
  std::string prompt;  // with "{}" where the subject goes
  std::string subject;
  std::string target;
  std::vector<std::string> paraphrases;           // for evaluation
  std::vector<std::string> neighborhood_prompts;  // for evaluation (locality)
};

struct EditJobSpec {
  std::string parent;  // "" = the base model
  std::string output;
  std::string method = "rome";  // rome, memit, alphaedit
  std::vector<EditFact> edits;
  std::vector<int64_t> layers;  // empty at submission = EditLayers; filled in by the check
  // Weight of the key statistics: 0 = identity (no statistics); negative = the default (the
  // base's intermediate size for MEMIT/AlphaEdit, 1 for ROME, whose update depends only on
  // whether statistics are used).
  double mom2_weight = -1;
  TrainingData covariance;  // a dataset; none = the built-in text
  ops::edit::ValueShiftOptions value;
  // ROME's context templates (texts sampled from the model put before the prompt, k* averaged
  // over them): how many, of how many tokens. Off by default: from a model whose text is noise
  // (the demo models) they pull k* away from the prompt's key and no single value fits them all
  // (measured: efficacy 0 with 5, 1.0 without, on the medium demo model); the paper's setting
  // for real checkpoints is 5 of 10 tokens.
  int64_t context_prefixes = 0;
  int64_t context_tokens = 10;
  double null_space_threshold = 0.1;  // AlphaEdit (relative to C's largest eigenvalue)
  double alphaedit_l2 = 10;
  int64_t repair_rounds = 3;   // update rounds after the first for edits that do not hold yet
  double min_locality = 0.75;  // an edit holds only if this share of its neighbourhood keeps its answers
  // Publish even when some edits do not hold (the evaluation says which); otherwise such a job
  // FAILS with FAILED_PRECONDITION, publishes nothing and keeps the per-edit report.
  bool accept_partial = false;
  uint64_t seed = 0;

  // The hyper-parameters by name (EditRequest.parameters: v_steps, v_lr, v_weight_decay,
  // v_margin, clamp_norm_factor, kl_factor, context_prefixes, context_tokens,
  // null_space_threshold, alphaedit_l2, repair_rounds, min_locality): Parameters lists them with their values; SetParameter sets one
  // (INVALID_ARGUMENT naming the known ones for an unknown name, or for a count that is not a
  // whole number). Ranges are checked at submission.
  std::map<std::string, double> Parameters() const;
  absl::Status SetParameter(const std::string& name, double value);

  std::string ToJson() const;
  static absl::StatusOr<EditJobSpec> FromJson(const std::string& json);
};

struct StatsJobSpec {
  std::string output;  // always empty: statistics are no variant
  std::vector<int64_t> layers;  // empty = the default layers of every method
  TrainingData covariance;

  std::string ToJson() const;
  static absl::StatusOr<StatsJobSpec> FromJson(const std::string& json);
};

// EditLayers: the layers a method edits by default for a base of `num_layers` layers, after the
// papers' choices for GPT-J and Llama (ROME: one layer at about 15% of the depth; MEMIT and
// AlphaEdit: about 5/32 of the layers from there on), never the last layer (its output at the
// subject would reach no later attention).
std::vector<int64_t> EditLayers(const std::string& method, int64_t num_layers);

struct EditJobsOptions {
  std::string statistics_dir;      // DATA_DIR/stats
  std::string model_fingerprint;   // model::ModelFingerprint of the base
};

class EditJobs {
 public:
  // The constructor registers the EDIT and STATS kinds with `runner`, which must not be started.
  EditJobs(VariantRegistry* registry, const DatasetStore* datasets, JobRunner* runner, EditJobsOptions options);

  absl::StatusOr<JobRecord> Submit(EditJobSpec spec, const std::string& idempotency_key);
  absl::StatusOr<JobRecord> Submit(StatsJobSpec spec, const std::string& idempotency_key);

 private:
  absl::StatusOr<int64_t> Check(EditJobSpec& spec) const;
  absl::StatusOr<int64_t> Check(StatsJobSpec& spec) const;
  absl::Status Run(const EditJobSpec& spec, JobContext& context);
  absl::Status Run(const StatsJobSpec& spec, JobContext& context);
  absl::StatusOr<StatisticsSource> Source(const TrainingData& covariance) const;
  // StatisticsBytes: the memory of holding and solving with `layers` statistics.
  int64_t StatisticsBytes(size_t layers) const;

  VariantRegistry* const registry_;
  const DatasetStore* const datasets_;
  const KeyStatisticsCache statistics_;
  const SpecJobKind<EditJobSpec> edit_kind_;
  const SpecJobKind<StatsJobSpec> stats_kind_;
};

}  // namespace deltaserve::control
