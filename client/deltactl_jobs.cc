#include "client/deltactl_jobs.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include <google/protobuf/util/json_util.h>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/deltactl_files.h"
#include "client/deltactl_progress.h"
#include "client/deltactl_report.h"

ABSL_DECLARE_FLAG(int64_t, seed);
ABSL_DECLARE_FLAG(std::string, target);  // in `jobs edit`: the new completion (deltactl_main.cc)
ABSL_FLAG(std::string, method, "", "jobs merge: cat, linear, svd, task_arithmetic, ties, dare_linear, dare_ties, "
                                   "breadcrumbs, breadcrumbs_ties or magnitude_prune; jobs edit: rome (default), "
                                   "memit or alphaedit");
ABSL_FLAG(std::string, out, "", "jobs merge: the new variant's name");
ABSL_FLAG(int32_t, rank, 0, "jobs merge: output rank (0 = the largest input rank; ignored by cat)");
ABSL_FLAG(double, density, std::nan(""), "jobs merge: fraction of entries kept (default 1)");
ABSL_FLAG(double, gamma, std::nan(""), "jobs merge: breadcrumbs' fraction of largest entries dropped (default 0.01)");
ABSL_FLAG(double, lambda, std::nan(""), "jobs merge: scale of the merged delta (default 1)");
ABSL_FLAG(double, lines_alpha, std::nan(""), "jobs merge: LiNeS scale of the first layer");
ABSL_FLAG(double, lines_beta, std::nan(""), "jobs merge: LiNeS scale added by the last layer");
ABSL_FLAG(std::string, idempotency_key, "", "jobs merge: a repeated request with this key returns the first job");
ABSL_FLAG(std::string, recipe, "", "jobs merge: a MergeRequest as a JSON file");
ABSL_FLAG(bool, wait, false, "jobs merge: follow the job until it ends");
ABSL_FLAG(std::string, parent, "", "jobs finetune: the variant to start from (empty = the base model)");
ABSL_FLAG(std::string, texts_file, "", "jobs finetune: training texts, one per line");
ABSL_FLAG(std::string, validation_file, "", "jobs finetune: validation texts, one per line");
ABSL_FLAG(double, alpha, std::nan(""), "jobs finetune: LoRA alpha (default 2 * rank)");
ABSL_FLAG(int32_t, steps, 0, "jobs finetune: optimizer steps (0 = --epochs over the texts); "
                                 "jobs unlearn: the step budget (default 200)");
ABSL_FLAG(int32_t, epochs, 0, "jobs finetune: passes over the texts when --steps is 0 (default 1)");
ABSL_FLAG(double, learning_rate, std::nan(""), "jobs finetune: AdamW learning rate (default 0.001)");
ABSL_FLAG(int32_t, batch_size, 0, "jobs finetune: texts per step (default 8)");
ABSL_FLAG(int32_t, warmup_steps, 0, "jobs finetune: steps of linear learning-rate warm-up");
ABSL_FLAG(std::vector<std::string>, target_modules, {}, "jobs finetune: modules to adapt (default all seven)");
ABSL_FLAG(std::string, target_variant, "", "jobs unlearn: the variant to unlearn from");
ABSL_FLAG(std::string, unlearn_method, "npo", "jobs unlearn: grad_ascent, grad_diff, npo or simnpo");
ABSL_FLAG(std::string, forget_file, "", "jobs unlearn: texts to forget, one per line");
ABSL_FLAG(std::string, retain_file, "", "jobs unlearn: texts to keep, one per line");
ABSL_FLAG(std::string, holdout_file, "", "jobs unlearn: texts never trained on (membership report), one per line");
ABSL_FLAG(double, beta, std::nan(""), "jobs unlearn: NPO/SimNPO beta (defaults 0.1 / 4.5)");
ABSL_FLAG(std::string, dataset, "", "jobs finetune: a dataset of the Datasets service instead of --texts-file");
ABSL_FLAG(std::string, validation_dataset, "", "jobs finetune: a validation dataset instead of --validation-file");
ABSL_FLAG(std::string, forget_dataset, "", "jobs unlearn: a forget dataset instead of --forget-file");
ABSL_FLAG(std::string, retain_dataset, "", "jobs unlearn: a retain dataset instead of --retain-file");
ABSL_FLAG(std::string, holdout_dataset, "", "jobs unlearn: a holdout dataset instead of --holdout-file");
ABSL_FLAG(int32_t, micro_batch_size, 0, "jobs finetune/unlearn: rows per forward pass, gradients accumulate (0 = batch)");
ABSL_FLAG(bool, replace_target, false, "jobs unlearn: switch the target's name to the result (no --out)");
ABSL_FLAG(bool, keep_previous, false, "jobs unlearn: with --replace-target, keep the old version as TARGET@N");
ABSL_FLAG(std::string, prompt, "", "jobs edit: the fact's prompt, with {} where the subject goes");
ABSL_FLAG(std::string, subject, "", "jobs edit: the fact's subject");
ABSL_FLAG(std::vector<std::string>, paraphrase, {}, "jobs edit: paraphrases of the prompt for the evaluation (comma-separated)");
ABSL_FLAG(std::vector<std::string>, neighborhood, {}, "jobs edit: unrelated prompts for the locality measure (comma-separated)");
ABSL_FLAG(std::string, edits_file, "", "jobs edit: a JSONL file of edits, one {\"prompt\", \"subject\", \"target\", "
                                       "\"paraphrases\", \"neighborhood_prompts\"} per line");
ABSL_FLAG(std::vector<std::string>, layers, {}, "jobs edit/stats: layers to edit or collect statistics for (default: by depth)");
ABSL_FLAG(double, mom2_weight, std::nan(""), "jobs edit: weight of the key statistics (0 = none)");
ABSL_FLAG(std::string, covariance_dataset, "", "jobs edit/stats: dataset the statistics are collected over (default: built-in text)");
ABSL_FLAG(std::vector<std::string>, param, {}, "jobs edit: hyper-parameters as NAME=VALUE, e.g. v_steps=50,clamp_norm_factor=8");
ABSL_FLAG(bool, accept_partial, false, "jobs edit/unlearn: publish even when some edits do not hold or the unlearning "
                                        "goal is not met (the evaluation says what holds)");
ABSL_FLAG(double, retain_weight, std::nan(""), "jobs unlearn: weight of the retain loss (default 3)");
ABSL_FLAG(std::string, retain_loss, "", "jobs unlearn: nll (default) or kl (to the target's own predictions)");
ABSL_FLAG(std::string, recall_metric, "", "jobs unlearn: how recall is measured: exact (default) or rouge_l");
ABSL_FLAG(double, forget_recall_max, std::nan(""), "jobs unlearn: the forget set's recall to reach, at most (default 0)");
ABSL_FLAG(double, retain_floor, std::nan(""),
          "jobs unlearn: the retain set's recall to keep, as a fraction of the target's (default 0.9)");
ABSL_FLAG(int32_t, eval_every, 0, "jobs unlearn: steps between evaluations of the goal (default 5)");
ABSL_FLAG(std::string, state, "", "jobs list: only jobs in this state (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)");
ABSL_FLAG(std::string, kind, "", "jobs list: only jobs of this kind (merge, finetune, unlearn, edit, stats)");

namespace deltaserve::client {
namespace {

namespace v1 = deltaserve::v1;

int Usage(const std::string& text) {
  std::fprintf(stderr, "usage: deltactl jobs %s\n", text.c_str());
  return 2;
}

std::string Percent(double progress) { return absl::StrCat(static_cast<int>(std::floor(progress * 100)), "%"); }

std::string FormatTime(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixSeconds(time.seconds()), absl::LocalTimeZone());
}

std::string KindName(v1::JobKind kind) {
  switch (kind) {
    case v1::MERGE_JOB: return "merge";
    case v1::FINETUNE_JOB: return "finetune";
    case v1::UNLEARN_JOB: return "unlearn";
    case v1::EDIT_JOB: return "edit";
    case v1::STATS_JOB: return "stats";
    default: return "unknown";
  }
}

// ReadLines returns the non-empty lines of a file; false when it cannot be read.
bool ReadLines(const std::string& path, google::protobuf::RepeatedPtrField<std::string>* lines) {
  std::ifstream file(path);
  if (!file) return false;
  std::string line;
  while (std::getline(file, line)) {
    if (!line.empty()) *lines->Add() = line;
  }
  return true;
}

// PrintProgress shows an update: id, state, a bar with the percentage, and what the job does (a
// training job's message carries step, loss and tokens/s), or why it failed. On a terminal
// (unless --progress=never) one line is redrawn in place until the job ends; otherwise each
// update is its own line, for scripts and logs.
void PrintProgress(const v1::Job& job) {
  static const bool redraw = ::isatty(STDOUT_FILENO) == 1 && absl::GetFlag(FLAGS_progress) != "never";
  const bool over = job.state() == v1::SUCCEEDED || job.state() == v1::FAILED || job.state() == v1::CANCELLED;
  std::printf(redraw ? "\r\033[K%s %-9s %s %4s  %s%s" : "%s %-9s %s %4s  %s%s\n", job.id().c_str(),
              v1::JobState_Name(job.state()).c_str(), ProgressBar(job.progress()).c_str(), Percent(job.progress()).c_str(),
              job.state() == v1::FAILED ? (job.error_code() + ": " + job.error()).c_str() : job.message().c_str(),
              redraw && over ? "\n" : "");
  std::fflush(stdout);
}

void PrintDetail(const v1::Job& job) {
  std::printf("id:       %s\nkind:     %s\nstate:    %s\nprogress: %s\nmessage:  %s\noutput:   %s\n"
              "created:  %s\nstarted:  %s\nfinished: %s\n",
              job.id().c_str(), KindName(job.kind()).c_str(), v1::JobState_Name(job.state()).c_str(),
              Percent(job.progress()).c_str(), job.message().c_str(), job.output_variant().c_str(),
              FormatTime(job.created()).c_str(), FormatTime(job.started()).c_str(), FormatTime(job.finished()).c_str());
  if (!job.error().empty()) std::printf("error:    %s: %s\n", job.error_code().c_str(), job.error().c_str());
  if (!job.report_json().empty()) std::printf("report:   %s\n", job.report_json().c_str());
  // What was asked, whichever kind.
  for (const google::protobuf::Message* asked :
       {static_cast<const google::protobuf::Message*>(job.has_merge() ? &job.merge() : nullptr),
        static_cast<const google::protobuf::Message*>(job.has_finetune() ? &job.finetune() : nullptr),
        static_cast<const google::protobuf::Message*>(job.has_unlearn() ? &job.unlearn() : nullptr),
        static_cast<const google::protobuf::Message*>(job.has_edit() ? &job.edit() : nullptr),
        static_cast<const google::protobuf::Message*>(job.has_stats() ? &job.stats() : nullptr)}) {
    if (asked == nullptr) continue;
    std::string request;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(*asked, &request, options);
    std::printf("request:  %s\n", request.c_str());
  }
}

// Follow watches a job to its end, printing each update; exit code 0 only for SUCCEEDED.
int Follow(DeltaserveClient& client, const std::string& id) {
  grpc::ClientContext context;
  v1::WatchJobRequest request;
  request.set_id(id);
  std::unique_ptr<grpc::ClientReader<v1::Job>> reader = client.jobs().WatchJob(&context, request);
  v1::Job job;
  v1::JobState last = v1::JOB_STATE_UNSPECIFIED;
  while (reader->Read(&job)) {
    PrintProgress(job);
    last = job.state();
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ReportStatus(client, status);
  return last == v1::SUCCEEDED ? 0 : 1;
}

// ReadTextFiles fills each field with its file's non-empty lines (files with an empty path are
// skipped); false, after saying which, when a file cannot be read.
bool ReadTextFiles(
    const std::vector<std::pair<std::string, google::protobuf::RepeatedPtrField<std::string>*>>& files) {
  for (const auto& [path, lines] : files) {
    if (!path.empty() && !ReadLines(path, lines)) {
      std::fprintf(stderr, "deltactl: cannot read %s\n", path.c_str());
      return false;
    }
  }
  return true;
}

// Submit sends one of the Submit* requests, prints the job, and with --wait follows it.
template <typename Request>
int Submit(DeltaserveClient& client, const Request& request,
           grpc::Status (v1::Jobs::Stub::*call)(grpc::ClientContext*, const Request&, v1::Job*)) {
  grpc::ClientContext context;
  v1::Job job;
  grpc::Status status = (client.jobs().*call)(&context, request, &job);
  if (!status.ok()) return ReportStatus(client, status);
  PrintProgress(job);
  return absl::GetFlag(FLAGS_wait) ? Follow(client, job.id()) : 0;
}

// ParseInput reads "NAME:WEIGHT" or "NAME" (weight 1). Names never contain ':'.
bool ParseInput(const std::string& text, v1::MergeInput* input) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos) {
    input->set_variant(text);
    return !text.empty();
  }
  double weight = 0;
  if (!absl::SimpleAtod(text.substr(colon + 1), &weight)) return false;
  input->set_variant(text.substr(0, colon));
  input->set_weight(weight);
  return colon > 0;
}

int Merge(DeltaserveClient& client, const std::vector<std::string>& inputs) {
  v1::MergeRequest request;
  const std::string recipe = absl::GetFlag(FLAGS_recipe);
  if (!recipe.empty()) {
    std::string text;
    if (!ReadWholeFile(recipe, &text)) {
      std::fprintf(stderr, "deltactl: cannot read the recipe %s\n", recipe.c_str());
      return 2;
    }
    google::protobuf::util::Status parsed = google::protobuf::util::JsonStringToMessage(text, &request);
    if (!parsed.ok()) {
      std::fprintf(stderr, "deltactl: the recipe %s is not a MergeRequest in JSON: %s\n", recipe.c_str(),
                   parsed.ToString().c_str());
      return 2;
    }
  }
  for (const std::string& text : inputs) {
    if (!ParseInput(text, request.add_inputs())) {
      std::fprintf(stderr, "deltactl: input \"%s\" is not NAME or NAME:WEIGHT\n", text.c_str());
      return 2;
    }
  }
  if (!absl::GetFlag(FLAGS_method).empty()) request.set_method(absl::GetFlag(FLAGS_method));
  if (!absl::GetFlag(FLAGS_out).empty()) request.set_output(absl::GetFlag(FLAGS_out));
  if (absl::GetFlag(FLAGS_rank) != 0) request.set_rank(absl::GetFlag(FLAGS_rank));
  if (!std::isnan(absl::GetFlag(FLAGS_density))) request.set_density(absl::GetFlag(FLAGS_density));
  if (!std::isnan(absl::GetFlag(FLAGS_gamma))) request.set_gamma(absl::GetFlag(FLAGS_gamma));
  if (!std::isnan(absl::GetFlag(FLAGS_lambda))) request.set_lambda(absl::GetFlag(FLAGS_lambda));
  if (absl::GetFlag(FLAGS_seed) >= 0) request.set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  if (!std::isnan(absl::GetFlag(FLAGS_lines_alpha))) {
    (*request.mutable_parameters())["lines_alpha"] = absl::GetFlag(FLAGS_lines_alpha);
  }
  if (!std::isnan(absl::GetFlag(FLAGS_lines_beta))) {
    (*request.mutable_parameters())["lines_beta"] = absl::GetFlag(FLAGS_lines_beta);
  }
  if (!absl::GetFlag(FLAGS_idempotency_key).empty()) request.set_idempotency_key(absl::GetFlag(FLAGS_idempotency_key));
  if (request.output().empty() || request.inputs().empty()) {
    return Usage("merge --method M [--rank R] [--density D] --out NAME INPUT[:WEIGHT]... (or --recipe FILE)");
  }
  return Submit(client, request, &v1::Jobs::Stub::SubmitMerge);
}

int Finetune(DeltaserveClient& client) {
  v1::FinetuneRequest request;
  request.set_parent(absl::GetFlag(FLAGS_parent));
  request.set_output(absl::GetFlag(FLAGS_out));
  const std::string texts = absl::GetFlag(FLAGS_texts_file), validation = absl::GetFlag(FLAGS_validation_file);
  request.set_dataset(absl::GetFlag(FLAGS_dataset));
  request.set_validation_dataset(absl::GetFlag(FLAGS_validation_dataset));
  if (request.output().empty() || (texts.empty() == request.dataset().empty())) {
    return Usage("finetune --out NAME (--texts-file FILE | --dataset D) [--parent V] [--validation-file FILE | "
                 "--validation-dataset D] [--rank R] [--alpha A] [--steps N | --epochs N] [--learning-rate LR] "
                 "[--batch-size B] [--micro-batch-size M] [--seed S] [--wait]");
  }
  if (!ReadTextFiles({{texts, request.mutable_texts()}, {validation, request.mutable_validation_texts()}})) return 2;
  request.set_rank(absl::GetFlag(FLAGS_rank));
  if (!std::isnan(absl::GetFlag(FLAGS_alpha))) request.set_alpha(absl::GetFlag(FLAGS_alpha));
  for (const std::string& module : absl::GetFlag(FLAGS_target_modules)) request.add_target_modules(module);
  request.set_steps(absl::GetFlag(FLAGS_steps));
  request.set_epochs(absl::GetFlag(FLAGS_epochs));
  if (!std::isnan(absl::GetFlag(FLAGS_learning_rate))) request.set_learning_rate(absl::GetFlag(FLAGS_learning_rate));
  request.set_batch_size(absl::GetFlag(FLAGS_batch_size));
  request.set_micro_batch_size(absl::GetFlag(FLAGS_micro_batch_size));
  request.set_warmup_steps(absl::GetFlag(FLAGS_warmup_steps));
  if (absl::GetFlag(FLAGS_seed) >= 0) request.set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  request.set_idempotency_key(absl::GetFlag(FLAGS_idempotency_key));
  return Submit(client, request, &v1::Jobs::Stub::SubmitFinetune);
}

int Unlearn(DeltaserveClient& client) {
  v1::UnlearnRequest request;
  request.set_target(absl::GetFlag(FLAGS_target_variant));
  request.set_output(absl::GetFlag(FLAGS_out));
  request.set_method(absl::GetFlag(FLAGS_unlearn_method));
  request.set_forget_dataset(absl::GetFlag(FLAGS_forget_dataset));
  request.set_retain_dataset(absl::GetFlag(FLAGS_retain_dataset));
  request.set_holdout_dataset(absl::GetFlag(FLAGS_holdout_dataset));
  request.set_replace_target(absl::GetFlag(FLAGS_replace_target));
  request.set_keep_previous(absl::GetFlag(FLAGS_keep_previous));
  if (request.target().empty() || (request.output().empty() != request.replace_target()) ||
      (absl::GetFlag(FLAGS_forget_file).empty() == request.forget_dataset().empty())) {
    return Usage("unlearn --target-variant V (--out NAME | --replace-target [--keep-previous]) "
                 "(--forget-file FILE | --forget-dataset D) [--retain-file FILE | --retain-dataset D] "
                 "[--holdout-file FILE | --holdout-dataset D] [--unlearn-method npo|simnpo|grad_diff|grad_ascent] "
                 "[--steps BUDGET] [--learning-rate LR] [--rank R] [--beta B] [--retain-weight W] [--retain-loss nll|kl] "
                 "[--recall-metric exact|rouge_l] [--forget-recall-max F] [--retain-floor R] [--eval-every K] "
                 "[--accept-partial] [--micro-batch-size M] [--seed S] [--wait]");
  }
  if (!ReadTextFiles({{absl::GetFlag(FLAGS_forget_file), request.mutable_forget_texts()},
                      {absl::GetFlag(FLAGS_retain_file), request.mutable_retain_texts()},
                      {absl::GetFlag(FLAGS_holdout_file), request.mutable_holdout_texts()}})) {
    return 2;
  }
  request.set_rank(absl::GetFlag(FLAGS_rank));
  request.set_steps(absl::GetFlag(FLAGS_steps));
  if (!std::isnan(absl::GetFlag(FLAGS_learning_rate))) request.set_learning_rate(absl::GetFlag(FLAGS_learning_rate));
  request.set_batch_size(absl::GetFlag(FLAGS_batch_size));
  request.set_micro_batch_size(absl::GetFlag(FLAGS_micro_batch_size));
  if (!std::isnan(absl::GetFlag(FLAGS_beta))) request.set_beta(absl::GetFlag(FLAGS_beta));
  if (!std::isnan(absl::GetFlag(FLAGS_retain_weight))) request.set_retain_weight(absl::GetFlag(FLAGS_retain_weight));
  request.set_retain_loss(absl::GetFlag(FLAGS_retain_loss));
  request.set_recall_metric(absl::GetFlag(FLAGS_recall_metric));
  if (!std::isnan(absl::GetFlag(FLAGS_forget_recall_max))) {
    request.set_forget_recall_max(absl::GetFlag(FLAGS_forget_recall_max));
  }
  if (!std::isnan(absl::GetFlag(FLAGS_retain_floor))) request.set_retain_floor(absl::GetFlag(FLAGS_retain_floor));
  request.set_eval_every(absl::GetFlag(FLAGS_eval_every));
  request.set_accept_partial(absl::GetFlag(FLAGS_accept_partial));
  if (absl::GetFlag(FLAGS_seed) >= 0) request.set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  request.set_idempotency_key(absl::GetFlag(FLAGS_idempotency_key));
  return Submit(client, request, &v1::Jobs::Stub::SubmitUnlearn);
}

// ParseLayers reads --layers; false after saying what is wrong.
bool ParseLayers(google::protobuf::RepeatedField<int32_t>* layers) {
  for (const std::string& text : absl::GetFlag(FLAGS_layers)) {
    int32_t layer = 0;
    if (!absl::SimpleAtoi(text, &layer)) {
      std::fprintf(stderr, "deltactl: --layers takes layer numbers, e.g. 4,5,6; got \"%s\"\n", text.c_str());
      return false;
    }
    layers->Add(layer);
  }
  return true;
}

// ReadEdits adds the edits of a JSONL file (one EditSpec per line); false after naming the line.
bool ReadEdits(const std::string& path, v1::EditRequest* request) {
  std::ifstream file(path);
  if (!file) {
    std::fprintf(stderr, "deltactl: cannot read %s\n", path.c_str());
    return false;
  }
  std::string line;
  for (int number = 1; std::getline(file, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    google::protobuf::util::Status parsed = google::protobuf::util::JsonStringToMessage(line, request->add_edits());
    if (!parsed.ok()) {
      std::fprintf(stderr, "deltactl: %s:%d: not an edit ({\"prompt\", \"subject\", \"target\", ...}): %s\n",
                   path.c_str(), number, parsed.ToString().c_str());
      return false;
    }
  }
  return true;
}

int Edit(DeltaserveClient& client) {
  v1::EditRequest request;
  request.set_parent(absl::GetFlag(FLAGS_parent));
  request.set_output(absl::GetFlag(FLAGS_out));
  request.set_method(absl::GetFlag(FLAGS_method));
  const bool inline_edit = !absl::GetFlag(FLAGS_prompt).empty() || !absl::GetFlag(FLAGS_subject).empty() ||
                           !absl::GetFlag(FLAGS_target).empty();
  if (request.output().empty() || inline_edit == !absl::GetFlag(FLAGS_edits_file).empty()) {
    return Usage("edit --out NAME (--prompt \"... {} ...\" --subject S --target T [--paraphrase P,...] "
                 "[--neighborhood N,...] | --edits-file FILE.jsonl) [--method rome|memit|alphaedit] [--parent V] "
                 "[--layers L,...] [--mom2-weight W] [--covariance-dataset D] [--param NAME=VALUE,...] [--accept-partial] "
                 "[--seed S] [--wait]");
  }
  if (inline_edit) {
    v1::EditSpec* edit = request.add_edits();
    edit->set_prompt(absl::GetFlag(FLAGS_prompt));
    edit->set_subject(absl::GetFlag(FLAGS_subject));
    edit->set_target(absl::GetFlag(FLAGS_target));
    for (const std::string& paraphrase : absl::GetFlag(FLAGS_paraphrase)) edit->add_paraphrases(paraphrase);
    for (const std::string& prompt : absl::GetFlag(FLAGS_neighborhood)) edit->add_neighborhood_prompts(prompt);
  } else if (!ReadEdits(absl::GetFlag(FLAGS_edits_file), &request)) {
    return 2;
  }
  if (!ParseLayers(request.mutable_layers())) return 2;
  if (!std::isnan(absl::GetFlag(FLAGS_mom2_weight))) request.set_mom2_weight(absl::GetFlag(FLAGS_mom2_weight));
  request.set_covariance_dataset(absl::GetFlag(FLAGS_covariance_dataset));
  request.set_accept_partial(absl::GetFlag(FLAGS_accept_partial));
  for (const std::string& parameter : absl::GetFlag(FLAGS_param)) {
    const size_t equals = parameter.find('=');
    double value = 0;
    if (equals == std::string::npos || !absl::SimpleAtod(parameter.substr(equals + 1), &value)) {
      std::fprintf(stderr, "deltactl: --param takes NAME=VALUE, got \"%s\"\n", parameter.c_str());
      return 2;
    }
    (*request.mutable_parameters())[parameter.substr(0, equals)] = value;
  }
  if (absl::GetFlag(FLAGS_seed) >= 0) request.set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  request.set_idempotency_key(absl::GetFlag(FLAGS_idempotency_key));
  return Submit(client, request, &v1::Jobs::Stub::SubmitEdit);
}

int Stats(DeltaserveClient& client) {
  v1::StatsRequest request;
  if (!ParseLayers(request.mutable_layers())) return 2;
  request.set_covariance_dataset(absl::GetFlag(FLAGS_covariance_dataset));
  request.set_idempotency_key(absl::GetFlag(FLAGS_idempotency_key));
  return Submit(client, request, &v1::Jobs::Stub::SubmitStats);
}

int List(DeltaserveClient& client) {
  v1::ListJobsRequest request;
  const std::string state = absl::AsciiStrToUpper(absl::GetFlag(FLAGS_state));
  if (!state.empty()) {
    v1::JobState value;
    if (!v1::JobState_Parse(state, &value)) return Usage("list [--state QUEUED|RUNNING|SUCCEEDED|FAILED|CANCELLED]");
    request.set_state(value);
  }
  const std::string kind = absl::AsciiStrToLower(absl::GetFlag(FLAGS_kind));
  if (!kind.empty()) {
    v1::JobKind value = v1::JOB_KIND_UNSPECIFIED;
    for (int k = v1::MERGE_JOB; k <= v1::STATS_JOB; ++k) {
      if (KindName(static_cast<v1::JobKind>(k)) == kind) value = static_cast<v1::JobKind>(k);
    }
    if (value == v1::JOB_KIND_UNSPECIFIED) return Usage("list [--kind merge|finetune|unlearn|edit|stats]");
    request.set_kind(value);
  }
  std::printf("%-10s %-6s %-10s %5s  %-32s %-19s  %s\n", "ID", "KIND", "STATE", "DONE", "OUTPUT", "CREATED", "MESSAGE");
  do {
    grpc::ClientContext context;
    v1::ListJobsResponse response;
    grpc::Status status = client.jobs().ListJobs(&context, request, &response);
    if (!status.ok()) return ReportStatus(client, status);
    for (const v1::Job& job : response.jobs()) {
      std::printf("%-10s %-6s %-10s %5s  %-32s %-19s  %s\n", job.id().c_str(), KindName(job.kind()).c_str(),
                  v1::JobState_Name(job.state()).c_str(), Percent(job.progress()).c_str(),
                  job.output_variant().c_str(), FormatTime(job.created()).c_str(),
                  (job.error().empty() ? job.message() : job.error()).c_str());
    }
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  return 0;
}

}  // namespace

int RunJobsCommand(DeltaserveClient& client, const std::vector<std::string>& arguments) {
  const std::string command = arguments.empty() ? "" : arguments[0];
  if (command == "merge") return Merge(client, std::vector<std::string>(arguments.begin() + 1, arguments.end()));
  if (command == "finetune") return Finetune(client);
  if (command == "unlearn") return Unlearn(client);
  if (command == "edit") return Edit(client);
  if (command == "stats") return Stats(client);
  if (command == "list") return List(client);
  if (arguments.size() != 2 || (command != "get" && command != "watch" && command != "cancel")) {
    return Usage("merge|finetune|unlearn|edit|stats|get|list|watch|cancel [ID]");
  }
  const std::string& id = arguments[1];
  if (command == "watch") return Follow(client, id);
  grpc::ClientContext context;
  v1::Job job;
  grpc::Status status;
  if (command == "get") {
    v1::GetJobRequest request;
    request.set_id(id);
    status = client.jobs().GetJob(&context, request, &job);
  } else {
    v1::CancelJobRequest request;
    request.set_id(id);
    status = client.jobs().CancelJob(&context, request, &job);
  }
  if (status.ok()) PrintDetail(job);
  return ReportStatus(client, status);
}

}  // namespace deltaserve::client
