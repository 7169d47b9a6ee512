#include "server/api/generation_service.h"

#include <deque>
#include <functional>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/api/deadline.h"
#include "server/api/grpc_status.h"
#include "server/common/status_macros.h"
#include "server/model/utf8_stream.h"

namespace deltaserve::api {
namespace {

namespace v1 = deltaserve::v1;

v1::FinishReason ToProto(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case engine::FinishReason::kDeadlineExceeded: return v1::FINISH_REASON_DEADLINE_EXCEEDED;
    case engine::FinishReason::kError: return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void FillOutput(const engine::GenerationOutput& output, const std::string& request_id,
                v1::GenerateResponse* response) {
  response->set_text(output.text);
  response->mutable_token_ids()->Add(output.token_ids.begin(), output.token_ids.end());
  response->mutable_logprobs()->Add(output.logprobs.begin(), output.logprobs.end());
  response->set_request_id(request_id);
}

// Status a finished engine request ends its RPC with.
grpc::Status FinalStatus(const engine::RequestResult& result) {
  if (!result.status.ok()) return ToGrpcStatus(result.status);
  if (result.reason == engine::FinishReason::kCancelled) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled");
  }
  if (result.reason == engine::FinishReason::kDeadlineExceeded) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the request's deadline passed");
  }
  return grpc::Status::OK;
}

// SubmitResolved submits `request`. When the engine no longer knows its adapter because the name
// switched to a new version between resolving and submitting (replace_target retires the old
// adapter as soon as no request uses it), it resolves the name once more and submits to the
// version now current. `resolved` sees the request finally submitted, before the engine can
// answer it.
absl::StatusOr<uint64_t> SubmitResolved(engine::Engine& engine, const control::VariantRegistry& variants,
                                        engine::EngineRequest request, std::shared_ptr<engine::RequestSink> sink,
                                        const std::function<void(const engine::EngineRequest&)>& resolved) {
  std::optional<engine::EngineRequest> again;
  if (request.adapter_id != 0) again = request;
  resolved(request);
  absl::StatusOr<uint64_t> id = engine.Submit(std::move(request), sink);
  if (!again.has_value() || !absl::IsNotFound(id.status())) return id;
  std::shared_ptr<const control::Variant> current = variants.Find(again->variant_name);
  if (current == nullptr || current->adapter_id == again->adapter_id || !control::CheckServable(*current).ok()) {
    return id;
  }
  again->adapter_id = current->adapter_id;
  again->variant_version = current->version;
  resolved(*again);
  return engine.Submit(std::move(*again), std::move(sink));
}

// Generate's reactor; also the engine's sink for the request. Owns itself from Start until
// OnDone; the engine may hold a reference longer, after which its callbacks are ignored.
class GenerateCall final : public grpc::ServerWriteReactor<v1::GenerateResponse>,
                           public engine::RequestSink,
                           public std::enable_shared_from_this<GenerateCall> {
 public:
  GenerateCall(engine::Engine* engine, const control::VariantRegistry* variants, telemetry::ServerMetrics* metrics)
      : engine_(engine), variants_(variants), metrics_(metrics) {}

  // Start submits the request; `lease` (the tenant's quota slot) is held until the call is
  // gone and charged with the tokens generated. A refusal tells the client when to retry, if
  // there is a time.
  void Start(grpc::ServerContextBase& context, absl::StatusOr<engine::EngineRequest> request,
             std::shared_ptr<auth::RequestLease> lease) {
    self_ = shared_from_this();
    {
      absl::MutexLock lock(&mutex_);
      lease_ = std::move(lease);
    }
    if (!request.ok()) {
      Gatekeeper::AddPushback(context, request.status());
      FinishNow(ToGrpcStatus(request.status()));
      return;
    }
    request_id_ = request->request_id;
    absl::StatusOr<uint64_t> id =
        SubmitResolved(*engine_, *variants_, std::move(*request), shared_from_this(),
                       [this](const engine::EngineRequest& submitted) {
                         absl::MutexLock lock(&mutex_);
                         variant_ = submitted.variant_name;
                         variant_version_ = submitted.variant_version;
                       });
    if (!id.ok()) {
      Gatekeeper::AddPushback(context, id.status());
      FinishNow(ToGrpcStatus(id.status()));
      return;
    }
    absl::MutexLock lock(&mutex_);
    engine_id_ = *id;
    submitted_ = true;
    if (cancel_seen_) engine_->Cancel(engine_id_);
  }

  void OnOutput(engine::GenerationOutput output) override {
    absl::MutexLock lock(&mutex_);
    if (finish_pending_ || done_) return;
    FillOutput(output, request_id_, &pending_.emplace_back());
    MaybeWriteLocked();
  }

  void OnFinished(engine::RequestResult result) override {
    absl::MutexLock lock(&mutex_);
    if (lease_ != nullptr) {  // the request is over: its tokens are charged and its slot is free
      lease_->Charge(result.usage.completion_tokens);
      lease_.reset();
    }
    if (finish_pending_ || done_) return;
    final_status_ = FinalStatus(result);
    if (final_status_.ok()) {
      v1::GenerateResponse& last = pending_.emplace_back();
      FillOutput(result.final_output, request_id_, &last);
      last.set_finish_reason(ToProto(result.reason));
      v1::Usage* usage = last.mutable_usage();
      usage->set_prompt_tokens(static_cast<int32_t>(result.usage.prompt_tokens));
      usage->set_completion_tokens(static_cast<int32_t>(result.usage.completion_tokens));
      usage->set_time_to_first_token_seconds(result.usage.time_to_first_token_seconds);
      usage->set_queue_time_seconds(result.usage.queue_time_seconds);
      last.set_variant(variant_);
      last.set_variant_version(variant_version_);
    } else {
      // Nothing more is written after an error; keep only a message already in flight.
      pending_.erase(writing_ ? pending_.begin() + 1 : pending_.begin(), pending_.end());
    }
    finish_pending_ = true;
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mutex_);
    writing_ = false;
    if (!pending_.empty()) pending_.pop_front();
    if (!ok) {
      // The client is gone: stop generating and end the call.
      if (submitted_) engine_->Cancel(engine_id_);
      pending_.clear();
      if (!finish_called_) {
        final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke");
        finish_pending_ = true;
      }
    }
    MaybeWriteLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mutex_);
    cancel_seen_ = true;
    if (submitted_) engine_->Cancel(engine_id_);
  }

  void OnDone() override {
    std::shared_ptr<GenerateCall> self;
    {
      absl::MutexLock lock(&mutex_);
      done_ = true;
      metrics_->RecordRpc("Generate", GrpcCodeName(final_status_.error_code()));
      self.swap(self_);
    }
  }

 private:
  void FinishNow(grpc::Status status) {
    absl::MutexLock lock(&mutex_);
    final_status_ = std::move(status);
    finish_pending_ = true;
    MaybeWriteLocked();
  }

  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (writing_ || finish_called_) return;
    if (!pending_.empty() && !(finish_pending_ && !final_status_.ok())) {
      writing_ = true;
      StartWrite(&pending_.front());
      return;
    }
    if (finish_pending_) {
      finish_called_ = true;
      Finish(final_status_);
    }
  }

  engine::Engine* const engine_;
  const control::VariantRegistry* const variants_;
  telemetry::ServerMetrics* const metrics_;
  absl::Mutex mutex_;
  std::shared_ptr<GenerateCall> self_;  // released in OnDone
  std::string request_id_;
  std::shared_ptr<auth::RequestLease> lease_ ABSL_GUARDED_BY(mutex_);  // until the request is over
  std::string variant_ ABSL_GUARDED_BY(mutex_);
  int64_t variant_version_ ABSL_GUARDED_BY(mutex_) = 0;
  // Responses to write, front is in flight while writing_ (deque keeps addresses stable).
  std::deque<v1::GenerateResponse> pending_ ABSL_GUARDED_BY(mutex_);
  uint64_t engine_id_ ABSL_GUARDED_BY(mutex_) = 0;
  bool submitted_ ABSL_GUARDED_BY(mutex_) = false;
  bool cancel_seen_ ABSL_GUARDED_BY(mutex_) = false;
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  // finish_pending_: the final status is known; Finish follows the queued writes.
  bool finish_pending_ ABSL_GUARDED_BY(mutex_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mutex_) = false;
  bool done_ ABSL_GUARDED_BY(mutex_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mutex_);
};

// Score's engine sink: completes the unary reactor when the engine finishes the request.
class ScoreSink final : public engine::RequestSink {
 public:
  ScoreSink(grpc::ServerUnaryReactor* reactor, v1::ScoreResponse* response,
            telemetry::ServerMetrics* metrics, std::shared_ptr<auth::RequestLease> lease)
      : reactor_(reactor), response_(response), metrics_(metrics), lease_(std::move(lease)) {}
  void OnOutput(engine::GenerationOutput) override {}
  void OnFinished(engine::RequestResult result) override {
    lease_.reset();  // the request is over: its slot is free
    grpc::Status status = FinalStatus(result);
    if (status.ok()) {
      response_->mutable_token_ids()->Add(result.scored_token_ids.begin(),
                                          result.scored_token_ids.end());
      double total = 0;
      for (float logprob : result.token_logprobs) {
        response_->add_token_logprobs(logprob);
        total += logprob;
      }
      response_->set_total_logprob(total);
    }
    metrics_->RecordRpc("Score", GrpcCodeName(status.error_code()));
    reactor_->Finish(status);
  }

 private:
  grpc::ServerUnaryReactor* reactor_;
  v1::ScoreResponse* response_;
  telemetry::ServerMetrics* metrics_;
  std::shared_ptr<auth::RequestLease> lease_;  // the tenant's concurrency slot until OnFinished
};

// InputIds resolves the "text or token ids, exactly one" input of Generate and Score.
absl::StatusOr<std::vector<int32_t>> InputIds(const engine::Engine& engine, const std::string& text,
                                              const google::protobuf::RepeatedField<int32_t>& ids,
                                              const char* text_field, const char* ids_field) {
  if (!text.empty() && !ids.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("set either ", text_field, " or ", ids_field, ", not both"));
  }
  if (!ids.empty()) return std::vector<int32_t>(ids.begin(), ids.end());
  if (text.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the input is empty: set ", text_field, " or ", ids_field));
  }
  return engine.tokenizer().EncodePrompt(text);
}

}  // namespace

GenerationService::GenerationService(engine::Engine* engine, const control::VariantRegistry* variants,
                                     telemetry::ServerMetrics* metrics, const ServingState* state,
                                     const Gatekeeper* gate, std::string base_model_name)
    : engine_(engine),
      variants_(variants),
      metrics_(metrics),
      state_(state),
      gate_(gate),
      base_model_name_(std::move(base_model_name)) {}

absl::Status GenerationService::CheckServing() const {
  if (state_->draining()) return absl::UnavailableError("the server is shutting down");
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const control::Variant>> GenerationService::ResolveVariant(
    const std::string& variant) const {
  if (variant.empty() || variant == base_model_name_) return nullptr;
  std::shared_ptr<const control::Variant> found = variants_->Find(variant);
  if (found != nullptr) {
    RETURN_IF_ERROR(control::CheckServable(*found));
    return found;
  }
  return absl::NotFoundError(absl::StrCat("variant \"", variant,
                                          "\" does not exist (the base model is \"",
                                          base_model_name_, "\" or an empty variant)"));
}

absl::StatusOr<engine::EngineRequest> GenerationService::NewEngineRequest(
    engine::RequestKind kind, const grpc::CallbackServerContext& context,
    const std::string& variant, const std::string& text,
    const google::protobuf::RepeatedField<int32_t>& ids, const char* text_field,
    const char* ids_field, std::shared_ptr<auth::RequestLease>* lease) const {
  RETURN_IF_ERROR(CheckServing());
  ASSIGN_OR_RETURN(Access access, gate_->Admit(context));
  if (!variant.empty() && variant != base_model_name_) RETURN_IF_ERROR(access.CheckSee("variant", variant));
  ASSIGN_OR_RETURN(*lease, gate_->Lease(access));
  engine::EngineRequest result;
  result.kind = kind;
  result.tenant = access.principal().tenant;
  result.tenant_weight = access.principal().weight;
  result.tenant_max_queued = access.principal().quotas.max_queued_requests();
  ASSIGN_OR_RETURN(std::shared_ptr<const control::Variant> found, ResolveVariant(variant));
  if (found != nullptr) {
    result.adapter_id = found->adapter_id;
    result.variant_name = found->name;
    result.variant_version = found->version;
  }
  ASSIGN_OR_RETURN(result.prompt_token_ids, InputIds(*engine_, text, ids, text_field, ids_field));
  result.deadline = DeadlineOf(context);
  return result;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto call = std::make_shared<GenerateCall>(engine_, variants_, metrics_);
  std::shared_ptr<auth::RequestLease> lease;
  absl::StatusOr<engine::EngineRequest> converted = [&]() -> absl::StatusOr<engine::EngineRequest> {
    ASSIGN_OR_RETURN(engine::EngineRequest result,
                     NewEngineRequest(engine::RequestKind::kGenerate, *context, request->variant(),
                                      request->prompt(), request->prompt_token_ids(), "prompt",
                                      "prompt_token_ids", &lease));
    const v1::SamplingParams& sampling = request->sampling();
    result.sampling.max_tokens = sampling.max_tokens();
    result.sampling.temperature = sampling.temperature();
    result.sampling.top_k = sampling.top_k();
    result.sampling.top_p = sampling.top_p() == 0.0f ? 1.0f : sampling.top_p();
    if (sampling.has_seed()) result.sampling.seed = sampling.seed();
    result.sampling.stop.assign(sampling.stop().begin(), sampling.stop().end());
    result.sampling.stop_token_ids.assign(sampling.stop_token_ids().begin(),
                                          sampling.stop_token_ids().end());
    result.sampling.ignore_eos = sampling.ignore_eos();
    result.sampling.logprobs = request->include_logprobs();
    result.request_id = request->request_id();
    if (result.request_id.size() > 128 || !model::IsValidUtf8(result.request_id)) {
      return absl::InvalidArgumentError("request_id must be valid UTF-8 of at most 128 bytes");
    }
    if (result.request_id.empty()) result.request_id = absl::StrCat("req-", next_request_number_++);
    return result;
  }();
  call->Start(*context, std::move(converted), std::move(lease));
  return call.get();
}

grpc::ServerUnaryReactor* GenerationService::Score(grpc::CallbackServerContext* context,
                                                   const v1::ScoreRequest* request,
                                                   v1::ScoreResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::shared_ptr<auth::RequestLease> lease;
  absl::StatusOr<engine::EngineRequest> converted =
      NewEngineRequest(engine::RequestKind::kScore, *context, request->variant(), request->text(),
                       request->token_ids(), "text", "token_ids", &lease);
  absl::Status status = converted.status();
  if (status.ok()) {
    status = SubmitResolved(*engine_, *variants_, std::move(*converted),
                            std::make_shared<ScoreSink>(reactor, response, metrics_, std::move(lease)),
                            [](const engine::EngineRequest&) {})
                 .status();
  }
  if (!status.ok()) {
    Gatekeeper::AddPushback(*context, status);
    grpc::Status failed = ToGrpcStatus(status);
    metrics_->RecordRpc("Score", GrpcCodeName(failed.error_code()));
    reactor->Finish(failed);
  }
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const v1::TokenizeRequest* request,
                                                      v1::TokenizeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const model::Tokenizer& tokenizer = engine_->tokenizer();
  absl::StatusOr<std::vector<int32_t>> ids = [&]() -> absl::StatusOr<std::vector<int32_t>> {
    RETURN_IF_ERROR(gate_->Admit(*context).status());
    return request->add_special_tokens() ? tokenizer.EncodePrompt(request->text()) : tokenizer.Encode(request->text());
  }();
  if (ids.ok()) {
    for (int32_t id : *ids) {
      response->add_token_ids(id);
      response->add_tokens(model::SanitizeUtf8(tokenizer.TokenBytes(id)));
    }
  }
  grpc::Status status = ToGrpcStatus(ids.status());
  metrics_->RecordRpc("Tokenize", GrpcCodeName(status.error_code()));
  reactor->Finish(status);
  return reactor;
}

}  // namespace deltaserve::api
