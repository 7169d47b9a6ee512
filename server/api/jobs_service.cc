#include "server/api/jobs_service.h"

#include <charconv>
#include <cstdlib>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/api/grpc_status.h"
#include "server/api/page_size.h"
#include "server/common/status_macros.h"

namespace deltaserve::api {
namespace {

namespace v1 = deltaserve::v1;


// Job kinds and states: the API's enums and the server's.
constexpr std::pair<v1::JobKind, control::JobKind> kKinds[] = {{v1::MERGE_JOB, control::JobKind::kMerge},
                                                               {v1::FINETUNE_JOB, control::JobKind::kFinetune},
                                                               {v1::UNLEARN_JOB, control::JobKind::kUnlearn},
                                                               {v1::EDIT_JOB, control::JobKind::kEdit},
                                                               {v1::STATS_JOB, control::JobKind::kStats}};
constexpr std::pair<v1::JobState, control::JobState> kStates[] = {{v1::QUEUED, control::JobState::kQueued},
                                                                  {v1::RUNNING, control::JobState::kRunning},
                                                                  {v1::SUCCEEDED, control::JobState::kSucceeded},
                                                                  {v1::FAILED, control::JobState::kFailed},
                                                                  {v1::CANCELLED, control::JobState::kCancelled}};

template <typename Proto, typename Server, size_t N>
Proto ToProtoEnum(const std::pair<Proto, Server> (&table)[N], Server value, Proto unknown) {
  for (const auto& [proto, server] : table) {
    if (server == value) return proto;
  }
  return unknown;
}

template <typename Proto, typename Server, size_t N>
std::optional<Server> FromProtoEnum(const std::pair<Proto, Server> (&table)[N], Proto value) {
  for (const auto& [proto, server] : table) {
    if (proto == value) return server;
  }
  return std::nullopt;
}

// Widen gives the double a float's shortest decimal form denotes, so that 0.3f is recorded as
// 0.3 rather than 0.30000001192092896.
double Widen(float value) {
  char text[32];
  auto [end, error] = std::to_chars(text, text + sizeof(text) - 1, value);
  if (error != std::errc()) return value;
  *end = '\0';
  return std::strtod(text, nullptr);
}

void SetTime(int64_t unix_nanos, google::protobuf::Timestamp* time) {
  time->set_seconds(unix_nanos / 1000000000);
  time->set_nanos(static_cast<int32_t>(unix_nanos % 1000000000));
}

void ToProto(const control::MergeJobSpec& spec, v1::MergeRequest* out) {
  for (const control::MergeInputSpec& input : spec.inputs) {
    v1::MergeInput* added = out->add_inputs();
    added->set_variant(input.variant);
    added->set_weight(input.weight);
  }
  out->set_method(spec.recipe.method);
  out->set_output(spec.output);
  out->set_rank(static_cast<int32_t>(spec.recipe.rank));
  out->set_density(static_cast<float>(spec.recipe.density));
  out->set_gamma(static_cast<float>(spec.recipe.gamma));
  out->set_lambda(static_cast<float>(spec.recipe.lambda));
  out->set_seed(spec.recipe.seed);
  if (spec.recipe.lines_alpha.has_value()) {
    (*out->mutable_parameters())["lines_alpha"] = *spec.recipe.lines_alpha;
    (*out->mutable_parameters())["lines_beta"] = spec.recipe.lines_beta;
  }
}

void ToProto(const control::FinetuneJobSpec& spec, v1::FinetuneRequest* out) {
  out->set_parent(spec.parent);
  out->set_output(spec.output);
  out->set_rank(static_cast<int32_t>(spec.rank));
  out->set_alpha(static_cast<float>(spec.alpha));
  for (const std::string& module : spec.target_modules) out->add_target_modules(module);
  out->set_steps(static_cast<int32_t>(spec.steps));
  out->set_epochs(static_cast<int32_t>(spec.epochs));
  out->set_learning_rate(static_cast<float>(spec.learning_rate));
  out->set_warmup_steps(static_cast<int32_t>(spec.warmup_steps));
  out->set_batch_size(static_cast<int32_t>(spec.batch_size));
  out->set_micro_batch_size(static_cast<int32_t>(spec.micro_batch_size));
  out->set_seed(spec.seed);
  out->set_dataset(spec.train.dataset);
  out->set_validation_dataset(spec.validation.dataset);
}

void ToProto(const control::UnlearnJobSpec& spec, v1::UnlearnRequest* out) {
  out->set_target(spec.target);
  out->set_output(spec.output);
  out->set_replace_target(spec.replace_target);
  out->set_keep_previous(spec.keep_previous);
  out->set_forget_dataset(spec.forget.dataset);
  out->set_retain_dataset(spec.retain.dataset);
  out->set_holdout_dataset(spec.holdout.dataset);
  out->set_micro_batch_size(static_cast<int32_t>(spec.micro_batch_size));
  out->set_method(spec.method);
  out->set_rank(static_cast<int32_t>(spec.rank));
  out->set_lora_alpha(static_cast<float>(spec.lora_alpha));
  out->set_steps(static_cast<int32_t>(spec.steps));
  out->set_learning_rate(static_cast<float>(spec.learning_rate));
  out->set_batch_size(static_cast<int32_t>(spec.batch_size));
  out->set_forget_weight(static_cast<float>(spec.forget_weight));
  out->set_retain_weight(static_cast<float>(spec.retain_weight));
  if (spec.beta > 0) out->set_beta(static_cast<float>(spec.beta));
  out->set_delta(static_cast<float>(spec.delta));
  out->set_recall_metric(spec.recall_metric);
  out->set_forget_recall_max(static_cast<float>(spec.forget_recall_max));
  out->set_retain_floor(static_cast<float>(spec.retain_floor));
  out->set_eval_every(static_cast<int32_t>(spec.eval_every));
  out->set_retain_loss(spec.retain_loss);
  out->set_accept_partial(spec.accept_partial);
  out->set_seed(spec.seed);
}

void ToProto(const control::EditJobSpec& spec, v1::EditRequest* out) {
  out->set_parent(spec.parent);
  out->set_output(spec.output);
  out->set_method(spec.method);
  for (const control::EditFact& fact : spec.edits) {
    v1::EditSpec* edit = out->add_edits();
    edit->set_prompt(fact.prompt);
    edit->set_subject(fact.subject);
    edit->set_target(fact.target);
    for (const std::string& paraphrase : fact.paraphrases) edit->add_paraphrases(paraphrase);
    for (const std::string& prompt : fact.neighborhood_prompts) edit->add_neighborhood_prompts(prompt);
  }
  for (int64_t layer : spec.layers) out->add_layers(static_cast<int32_t>(layer));
  if (spec.mom2_weight >= 0) out->set_mom2_weight(spec.mom2_weight);
  out->set_covariance_dataset(spec.covariance.dataset);
  for (const auto& [name, value] : spec.Parameters()) (*out->mutable_parameters())[name] = value;
  out->set_accept_partial(spec.accept_partial);
  out->set_seed(spec.seed);
}

void ToProto(const control::StatsJobSpec& spec, v1::StatsRequest* out) {
  for (int64_t layer : spec.layers) out->add_layers(static_cast<int32_t>(layer));
  out->set_covariance_dataset(spec.covariance.dataset);
}

void ToProto(const control::JobRecord& record, v1::Job* out) {
  out->set_id(control::JobId(record.number));
  out->set_kind(ToProtoEnum(kKinds, record.kind, v1::JOB_KIND_UNSPECIFIED));
  out->set_state(ToProtoEnum(kStates, record.state, v1::JOB_STATE_UNSPECIFIED));
  out->set_progress(record.progress);
  out->set_message(record.message);
  out->set_error(record.error);
  out->set_error_code(record.error_code);
  out->set_report_json(record.report_json);
  out->set_output_variant(record.output_variant);
  SetTime(record.created_unix_nanos, out->mutable_created());
  if (record.started_unix_nanos != 0) SetTime(record.started_unix_nanos, out->mutable_started());
  if (record.finished_unix_nanos != 0) SetTime(record.finished_unix_nanos, out->mutable_finished());
  if (record.kind == control::JobKind::kMerge) {
    absl::StatusOr<control::MergeJobSpec> spec = control::MergeJobSpec::FromJson(record.spec_json);
    if (spec.ok()) ToProto(*spec, out->mutable_merge());
  } else if (record.kind == control::JobKind::kFinetune) {
    absl::StatusOr<control::FinetuneJobSpec> spec = control::FinetuneJobSpec::FromJson(record.spec_json);
    if (spec.ok()) ToProto(*spec, out->mutable_finetune());
  } else if (record.kind == control::JobKind::kUnlearn) {
    absl::StatusOr<control::UnlearnJobSpec> spec = control::UnlearnJobSpec::FromJson(record.spec_json);
    if (spec.ok()) ToProto(*spec, out->mutable_unlearn());
  } else if (record.kind == control::JobKind::kEdit) {
    absl::StatusOr<control::EditJobSpec> spec = control::EditJobSpec::FromJson(record.spec_json);
    if (spec.ok()) ToProto(*spec, out->mutable_edit());
  } else if (record.kind == control::JobKind::kStats) {
    absl::StatusOr<control::StatsJobSpec> spec = control::StatsJobSpec::FromJson(record.spec_json);
    if (spec.ok()) ToProto(*spec, out->mutable_stats());
  }
}

absl::StatusOr<control::MergeJobSpec> FromProto(const v1::MergeRequest& request) {
  control::MergeJobSpec spec;
  if (request.method().empty()) return absl::InvalidArgumentError("method is required (e.g. cat, svd, ties)");
  if (request.rank() < 0) return absl::InvalidArgumentError(absl::StrCat("rank must not be negative, got ", request.rank()));
  for (const v1::MergeInput& input : request.inputs()) {
    spec.inputs.push_back({input.variant(), input.has_weight() ? input.weight() : 1.0});
  }
  spec.output = request.output();
  spec.recipe.method = request.method();
  spec.recipe.rank = request.rank();
  if (request.has_density()) spec.recipe.density = Widen(request.density());
  if (request.has_gamma()) spec.recipe.gamma = Widen(request.gamma());
  if (request.has_lambda()) spec.recipe.lambda = Widen(request.lambda());
  spec.recipe.seed = request.seed();
  for (const auto& [name, value] : request.parameters()) {
    if (name == "lines_alpha") {
      spec.recipe.lines_alpha = value;
    } else if (name == "lines_beta") {
      spec.recipe.lines_beta = value;
      if (!spec.recipe.lines_alpha.has_value()) spec.recipe.lines_alpha = 1.0;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown merge parameter \"", name, "\": known are lines_alpha and lines_beta"));
    }
  }
  return spec;
}

absl::StatusOr<control::FinetuneJobSpec> FromProto(const v1::FinetuneRequest& request) {
  control::FinetuneJobSpec spec;
  if (request.rank() < 0 || request.steps() < 0 || request.epochs() < 0 || request.batch_size() < 0 ||
      request.warmup_steps() < 0 || request.micro_batch_size() < 0) {
    return absl::InvalidArgumentError(
        "rank, steps, epochs, batch_size, micro_batch_size and warmup_steps must not be negative");
  }
  spec.parent = request.parent();
  spec.output = request.output();
  spec.train.texts.assign(request.texts().begin(), request.texts().end());
  spec.train.dataset = request.dataset();
  spec.validation.texts.assign(request.validation_texts().begin(), request.validation_texts().end());
  spec.validation.dataset = request.validation_dataset();
  spec.micro_batch_size = request.micro_batch_size();
  if (request.rank() > 0) spec.rank = request.rank();
  spec.alpha = request.has_alpha() ? Widen(request.alpha()) : 2.0 * spec.rank;
  spec.target_modules.assign(request.target_modules().begin(), request.target_modules().end());
  spec.steps = request.steps();
  if (request.epochs() > 0) spec.epochs = request.epochs();
  if (request.has_learning_rate()) spec.learning_rate = Widen(request.learning_rate());
  spec.warmup_steps = request.warmup_steps();
  if (request.batch_size() > 0) spec.batch_size = request.batch_size();
  spec.seed = request.seed();
  return spec;
}

absl::StatusOr<control::UnlearnJobSpec> FromProto(const v1::UnlearnRequest& request) {
  control::UnlearnJobSpec spec;
  if (request.rank() < 0 || request.steps() < 0 || request.batch_size() < 0 || request.micro_batch_size() < 0) {
    return absl::InvalidArgumentError("rank, steps, batch_size and micro_batch_size must not be negative");
  }
  spec.target = request.target();
  spec.output = request.output();
  spec.replace_target = request.replace_target();
  spec.keep_previous = request.keep_previous();
  if (!request.method().empty()) spec.method = request.method();
  spec.forget.texts.assign(request.forget_texts().begin(), request.forget_texts().end());
  spec.forget.dataset = request.forget_dataset();
  spec.retain.texts.assign(request.retain_texts().begin(), request.retain_texts().end());
  spec.retain.dataset = request.retain_dataset();
  spec.holdout.texts.assign(request.holdout_texts().begin(), request.holdout_texts().end());
  spec.holdout.dataset = request.holdout_dataset();
  spec.micro_batch_size = request.micro_batch_size();
  if (request.rank() > 0) spec.rank = request.rank();
  spec.lora_alpha = request.has_lora_alpha() ? Widen(request.lora_alpha()) : 2.0 * spec.rank;
  if (request.steps() > 0) spec.steps = request.steps();
  if (request.has_learning_rate()) {
    // Unset is the method's default (0 in the spec); an explicit value must be usable.
    if (!(request.learning_rate() > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("learning_rate must be in (0, 1), got ", request.learning_rate()));
    }
    spec.learning_rate = Widen(request.learning_rate());
  }
  if (request.batch_size() > 0) spec.batch_size = request.batch_size();
  if (request.has_forget_weight()) spec.forget_weight = Widen(request.forget_weight());
  if (request.has_retain_weight()) spec.retain_weight = Widen(request.retain_weight());
  if (request.has_beta()) {
    if (!(request.beta() > 0)) return absl::InvalidArgumentError("beta must be positive");
    spec.beta = Widen(request.beta());
  }
  if (request.has_delta()) spec.delta = Widen(request.delta());
  if (!request.recall_metric().empty()) spec.recall_metric = request.recall_metric();
  if (request.has_forget_recall_max()) spec.forget_recall_max = Widen(request.forget_recall_max());
  if (request.has_retain_floor()) spec.retain_floor = Widen(request.retain_floor());
  if (request.eval_every() < 0) return absl::InvalidArgumentError("eval_every must not be negative");
  if (request.eval_every() > 0) spec.eval_every = request.eval_every();
  if (!request.retain_loss().empty()) spec.retain_loss = request.retain_loss();
  spec.accept_partial = request.accept_partial();
  spec.seed = request.seed();
  return spec;
}

absl::StatusOr<control::EditJobSpec> FromProto(const v1::EditRequest& request) {
  control::EditJobSpec spec;
  spec.parent = request.parent();
  spec.output = request.output();
  if (!request.method().empty()) spec.method = request.method();
  for (const v1::EditSpec& edit : request.edits()) {
    spec.edits.push_back({edit.prompt(), edit.subject(), edit.target(),
                          {edit.paraphrases().begin(), edit.paraphrases().end()},
                          {edit.neighborhood_prompts().begin(), edit.neighborhood_prompts().end()}});
  }
  spec.layers.assign(request.layers().begin(), request.layers().end());
  if (request.has_mom2_weight()) {
    if (!(request.mom2_weight() >= 0)) return absl::InvalidArgumentError("mom2_weight must not be negative");
    spec.mom2_weight = request.mom2_weight();
  }
  spec.covariance.dataset = request.covariance_dataset();
  for (const auto& [name, value] : request.parameters()) RETURN_IF_ERROR(spec.SetParameter(name, value));
  spec.accept_partial = request.accept_partial();
  spec.seed = request.seed();
  return spec;
}

absl::StatusOr<control::StatsJobSpec> FromProto(const v1::StatsRequest& request) {
  control::StatsJobSpec spec;
  spec.layers.assign(request.layers().begin(), request.layers().end());
  spec.covariance.dataset = request.covariance_dataset();
  return spec;
}

// CheckAccess: what a submission names must be visible to the caller, and its output must lie
// in the caller's namespaces (or be a target it may change, for replace_target).
absl::Status CheckAccess(const Access& access, const v1::MergeRequest& request) {
  RETURN_IF_ERROR(access.CheckCreate("variant", request.output()));
  for (const v1::MergeInput& input : request.inputs()) RETURN_IF_ERROR(access.CheckSee("variant", input.variant()));
  return absl::OkStatus();
}

absl::Status CheckAccess(const Access& access, const v1::FinetuneRequest& request) {
  RETURN_IF_ERROR(access.CheckCreate("variant", request.output()));
  if (!request.parent().empty()) RETURN_IF_ERROR(access.CheckSee("variant", request.parent()));
  for (const std::string& dataset : {request.dataset(), request.validation_dataset()}) {
    if (!dataset.empty()) RETURN_IF_ERROR(access.CheckSee("dataset", dataset));
  }
  return absl::OkStatus();
}

absl::Status CheckAccess(const Access& access, const v1::UnlearnRequest& request) {
  if (request.replace_target()) {
    RETURN_IF_ERROR(access.CheckChange("variant", request.target()));
  } else {
    RETURN_IF_ERROR(access.CheckSee("variant", request.target()));
    RETURN_IF_ERROR(access.CheckCreate("variant", request.output()));
  }
  for (const std::string& dataset : {request.forget_dataset(), request.retain_dataset(), request.holdout_dataset()}) {
    if (!dataset.empty()) RETURN_IF_ERROR(access.CheckSee("dataset", dataset));
  }
  return absl::OkStatus();
}

absl::Status CheckAccess(const Access& access, const v1::EditRequest& request) {
  RETURN_IF_ERROR(access.CheckCreate("variant", request.output()));
  if (!request.parent().empty()) RETURN_IF_ERROR(access.CheckSee("variant", request.parent()));
  if (!request.covariance_dataset().empty()) RETURN_IF_ERROR(access.CheckSee("dataset", request.covariance_dataset()));
  return absl::OkStatus();
}

// Statistics belong to no tenant: they are shared by every edit on the base.
absl::Status CheckAccess(const Access& access, const v1::StatsRequest& request) {
  if (!access.Owns("")) {
    return absl::PermissionDeniedError(
        "statistics jobs are for admins (statistics are shared by every tenant); an edit job collects the "
        "statistics it lacks itself");
  }
  if (!request.covariance_dataset().empty()) RETURN_IF_ERROR(access.CheckSee("dataset", request.covariance_dataset()));
  return absl::OkStatus();
}

// AddsVariant: whether the job's success stores one more variant (a replace without
// keep_previous only swaps one).
bool AddsVariant(const v1::MergeRequest&) { return true; }
bool AddsVariant(const v1::FinetuneRequest&) { return true; }
bool AddsVariant(const v1::UnlearnRequest& request) { return !request.replace_target() || request.keep_previous(); }
bool AddsVariant(const v1::EditRequest&) { return true; }
bool AddsVariant(const v1::StatsRequest&) { return false; }

// The output a request names, for the audit log (statistics have none).
const std::string& OutputOf(const v1::StatsRequest&) {
  static const std::string none;
  return none;
}
template <typename Request>
const std::string& OutputOf(const Request& request) {
  return request.output();
}

// WatchJob's reactor and the runner's listener for the job. Owns itself; deleted once gRPC is
// done with it and the runner can no longer call it.
class WatchCall final : public grpc::ServerWriteReactor<v1::Job> {
 public:
  WatchCall(control::JobRunner* runner, telemetry::ServerMetrics* metrics) : runner_(runner), metrics_(metrics) {}

  // Start follows job `number`, or ends the call with its error.
  void Start(const absl::StatusOr<int64_t>& number) {
    absl::StatusOr<int64_t> token = [&]() -> absl::StatusOr<int64_t> {
      if (!number.ok()) return number.status();
      return runner_->Watch(*number, [this](const control::JobRecord& record) { OnRecord(record); });
    }();
    bool clean_up = false;
    {
      absl::MutexLock lock(&mutex_);
      start_returned_ = true;
      if (token.ok()) {
        token_ = *token;
      } else {
        final_status_ = ToGrpcStatus(token.status());
        finish_pending_ = true;
        MaybeWriteLocked();
      }
      clean_up = done_;
    }
    if (clean_up) CleanUp();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mutex_);
    writing_ = false;
    if (!ok) {
      final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke");
      finish_pending_ = true;
    } else if (std::optional<control::JobState> state = FromProtoEnum(kStates, in_flight_.state());
               state.has_value() && control::IsTerminal(*state)) {
      finish_pending_ = true;  // OK: the job ended and its last state was written
    }
    MaybeWriteLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mutex_);
    final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the watch was cancelled");
    finish_pending_ = true;
    latest_.reset();
    MaybeWriteLocked();
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&mutex_);
      done_ = true;
      metrics_->RecordRpc("WatchJob", GrpcCodeName(final_status_.error_code()));
      if (!start_returned_) return;  // Start cleans up
    }
    CleanUp();
  }

 private:
  void OnRecord(const control::JobRecord& record) {
    absl::MutexLock lock(&mutex_);
    if (finish_pending_) return;
    ToProto(record, &latest_.emplace());
    MaybeWriteLocked();
  }

  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (writing_ || finish_called_) return;
    if (latest_.has_value() && !finish_pending_) {
      in_flight_ = std::move(*latest_);
      latest_.reset();
      writing_ = true;
      StartWrite(&in_flight_);
      return;
    }
    if (finish_pending_) {
      finish_called_ = true;
      Finish(final_status_);
    }
  }

  void CleanUp() {
    if (token_.has_value()) runner_->Unwatch(*token_);
    delete this;
  }

  control::JobRunner* const runner_;
  telemetry::ServerMetrics* const metrics_;
  absl::Mutex mutex_;
  std::optional<int64_t> token_;  // set by Start, read by CleanUp after both Start and OnDone
  std::optional<v1::Job> latest_ ABSL_GUARDED_BY(mutex_);  // the newest record not yet written
  v1::Job in_flight_ ABSL_GUARDED_BY(mutex_);
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  // finish_pending_: no more writes; Finish follows the one in flight.
  bool finish_pending_ ABSL_GUARDED_BY(mutex_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mutex_) = false;
  bool start_returned_ ABSL_GUARDED_BY(mutex_) = false;
  bool done_ ABSL_GUARDED_BY(mutex_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace

JobsService::JobsService(control::JobRunner* runner, control::MergeJobs* merges, control::FinetuneJobs* finetunes,
                         control::UnlearnJobs* unlearns, control::EditJobs* edits, telemetry::ServerMetrics* metrics,
                         const ServingState* state, const Gatekeeper* gate)
    : runner_(runner),
      merges_(merges),
      finetunes_(finetunes),
      unlearns_(unlearns),
      edits_(edits),
      metrics_(metrics),
      state_(state),
      gate_(gate) {}

absl::StatusOr<control::JobRecord> JobsService::VisibleJob(const Access& access, const std::string& id) const {
  ASSIGN_OR_RETURN(int64_t number, control::ParseJobId(id));
  absl::StatusOr<control::JobRecord> job = runner_->Get(number);
  if (job.ok() && !access.Owns(job->output_variant)) {
    return absl::NotFoundError(absl::StrCat("job \"", id, "\" does not exist"));
  }
  return job;
}

grpc::ServerUnaryReactor* JobsService::Finish(grpc::CallbackServerContext* context, const char* method,
                                              const absl::Status& status) {
  grpc::Status converted = ToGrpcStatus(status);
  metrics_->RecordRpc(method, GrpcCodeName(converted.error_code()));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(converted);
  return reactor;
}

grpc::ServerUnaryReactor* JobsService::FinishWithJob(grpc::CallbackServerContext* context, const char* method,
                                                     const absl::StatusOr<control::JobRecord>& job,
                                                     v1::Job* response) {
  if (job.ok()) ToProto(*job, response);
  return Finish(context, method, job.status());
}

template <typename Request, typename Kind>
grpc::ServerUnaryReactor* JobsService::SubmitJob(grpc::CallbackServerContext* context, const char* method,
                                                 const Request& request, Kind* kind, v1::Job* response) {
  absl::StatusOr<Access> access = gate_->Admit(*context);
  absl::StatusOr<control::JobRecord> job = [&]() -> absl::StatusOr<control::JobRecord> {
    if (!access.ok()) return access.status();
    if (state_->draining()) return absl::UnavailableError("the server is shutting down; submit the job elsewhere");
    RETURN_IF_ERROR(CheckAccess(*access, request));
    RETURN_IF_ERROR(gate_->CheckJobs(*access));
    RETURN_IF_ERROR(gate_->CheckStorage(*access, AddsVariant(request)).status());
    ASSIGN_OR_RETURN(auto spec, FromProto(request));
    // Idempotency keys are per tenant: another tenant's key never returns (or blocks) its job.
    const std::string& tenant = access->principal().tenant;
    const std::string& key = request.idempotency_key();
    return kind->Submit(std::move(spec), tenant.empty() || key.empty() ? key : tenant + ":" + key);
  }();
  gate_->Audit(access, method, job.ok() ? job->output_variant : OutputOf(request),
               job.status());
  Gatekeeper::AddPushback(*context, job.status());
  return FinishWithJob(context, method, job, response);
}

grpc::ServerUnaryReactor* JobsService::SubmitMerge(grpc::CallbackServerContext* context,
                                                   const v1::MergeRequest* request, v1::Job* response) {
  return SubmitJob(context, "SubmitMerge", *request, merges_, response);
}

grpc::ServerUnaryReactor* JobsService::SubmitFinetune(grpc::CallbackServerContext* context,
                                                      const v1::FinetuneRequest* request, v1::Job* response) {
  return SubmitJob(context, "SubmitFinetune", *request, finetunes_, response);
}

grpc::ServerUnaryReactor* JobsService::SubmitUnlearn(grpc::CallbackServerContext* context,
                                                     const v1::UnlearnRequest* request, v1::Job* response) {
  return SubmitJob(context, "SubmitUnlearn", *request, unlearns_, response);
}

grpc::ServerUnaryReactor* JobsService::SubmitEdit(grpc::CallbackServerContext* context,
                                                  const v1::EditRequest* request, v1::Job* response) {
  return SubmitJob(context, "SubmitEdit", *request, edits_, response);
}

grpc::ServerUnaryReactor* JobsService::SubmitStats(grpc::CallbackServerContext* context,
                                                   const v1::StatsRequest* request, v1::Job* response) {
  return SubmitJob(context, "SubmitStats", *request, edits_, response);
}

grpc::ServerUnaryReactor* JobsService::GetJob(grpc::CallbackServerContext* context, const v1::GetJobRequest* request,
                                              v1::Job* response) {
  absl::StatusOr<control::JobRecord> job = [&]() -> absl::StatusOr<control::JobRecord> {
    ASSIGN_OR_RETURN(Access access, gate_->Admit(*context));
    return VisibleJob(access, request->id());
  }();
  return FinishWithJob(context, "GetJob", job, response);
}

grpc::ServerUnaryReactor* JobsService::ListJobs(grpc::CallbackServerContext* context,
                                                const v1::ListJobsRequest* request, v1::ListJobsResponse* response) {
  absl::Status status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Access access, gate_->Admit(*context));
    ASSIGN_OR_RETURN(const size_t page_size, PageSize(request->page_size()));
    int64_t before = 0;
    if (!request->page_token().empty() && (!absl::SimpleAtoi(request->page_token(), &before) || before < 1)) {
      return absl::InvalidArgumentError("page_token is not one this server returned");
    }
    control::JobFilter filter;
    if (request->state() != v1::JOB_STATE_UNSPECIFIED) {
      filter.state = FromProtoEnum(kStates, request->state());
      if (!filter.state.has_value()) return absl::InvalidArgumentError("unknown job state");
    }
    if (request->kind() != v1::JOB_KIND_UNSPECIFIED) {
      filter.kind = FromProtoEnum(kKinds, request->kind());
      if (!filter.kind.has_value()) return absl::InvalidArgumentError("unknown job kind");
    }
    // One more than a page tells whether another page follows; jobs the caller may not see are
    // skipped (fetching on past them).
    ASSIGN_OR_RETURN(std::vector<control::JobRecord> jobs,
                     VisiblePage<control::JobRecord>(
                         [&](int64_t after, size_t limit) -> absl::StatusOr<std::vector<control::JobRecord>> {
                           return runner_->List(filter, after, limit);
                         },
                         [](const control::JobRecord& job) { return job.number; },
                         [&](const control::JobRecord& job) { return access.Owns(job.output_variant); }, before,
                         page_size + 1));
    const bool more = jobs.size() > page_size;
    if (more) jobs.pop_back();
    for (const control::JobRecord& job : jobs) ToProto(job, response->add_jobs());
    if (more) response->set_next_page_token(std::to_string(jobs.back().number));
    return absl::OkStatus();
  }();
  return Finish(context, "ListJobs", status);
}

grpc::ServerWriteReactor<v1::Job>* JobsService::WatchJob(grpc::CallbackServerContext* context,
                                                         const v1::WatchJobRequest* request) {
  auto* call = new WatchCall(runner_, metrics_);
  call->Start([&]() -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(Access access, gate_->Admit(*context));
    ASSIGN_OR_RETURN(control::JobRecord job, VisibleJob(access, request->id()));
    return job.number;
  }());
  return call;
}

grpc::ServerUnaryReactor* JobsService::CancelJob(grpc::CallbackServerContext* context,
                                                 const v1::CancelJobRequest* request, v1::Job* response) {
  absl::StatusOr<Access> access = gate_->Admit(*context);
  absl::StatusOr<control::JobRecord> job = [&]() -> absl::StatusOr<control::JobRecord> {
    if (!access.ok()) return access.status();
    ASSIGN_OR_RETURN(control::JobRecord visible, VisibleJob(*access, request->id()));
    return runner_->Cancel(visible.number);
  }();
  gate_->Audit(access, "CancelJob", request->id(), job.status());
  return FinishWithJob(context, "CancelJob", job, response);
}

}  // namespace deltaserve::api
