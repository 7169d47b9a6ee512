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
  response->set_index(output.index);
  if (output.choice_finished.has_value()) response->set_finish_reason(ToProto(*output.choice_finished));
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

// Generate's reactor; also the engine's sink for the request. Owns itself from Start until
// OnDone; the engine may hold a reference longer, after which its callbacks are ignored.
class GenerateCall final : public grpc::ServerWriteReactor<v1::GenerateResponse>,
                           public engine::RequestSink,
                           public std::enable_shared_from_this<GenerateCall> {
 public:
  GenerateCall(GenerationFront* front, telemetry::ServerMetrics* metrics) : front_(front), metrics_(metrics) {}

  // Start submits the request; `lease` (the tenant's quota slot) is held until the call is
  // gone and charged with the tokens generated. A refusal tells the client when to retry, if
  // there is a time.
  void Start(grpc::ServerContextBase& context, absl::StatusOr<engine::EngineRequest> request,
             std::shared_ptr<auth::RequestLease> lease) {
    self_ = shared_from_this();
    {
      absl::MutexLock lock(&mutex_);
      lease_ = std::move(lease);
      deadline_ = DeadlineOf(context);
    }
    if (!request.ok()) {
      Gatekeeper::AddPushback(context, request.status());
      FinishNow(ToGrpcStatus(request.status()));
      return;
    }
    request_id_ = request->request_id;
    tenant_ = request->tenant;
    absl::StatusOr<uint64_t> id =
        front_->Submit(std::move(*request), shared_from_this(), [this](const engine::EngineRequest& submitted) {
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
    if (cancel_seen_) front_->Cancel(engine_id_);
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
    usage_ = result.usage;
    if (finish_pending_ || done_) return;
    final_status_ = FinalStatus(result);
    if (final_status_.ok()) {
      v1::GenerateResponse& last = pending_.emplace_back();
      FillOutput(result.final_output, request_id_, &last);
      last.set_finish_reason(ToProto(result.reason));
      v1::Usage* usage = last.mutable_usage();
      usage->set_prompt_tokens(static_cast<int32_t>(result.usage.prompt_tokens));
      usage->set_cached_prompt_tokens(static_cast<int32_t>(result.usage.cached_prompt_tokens));
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
      if (submitted_) front_->Cancel(engine_id_);
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
    // gRPC cancels a call whose deadline passed: that is DEADLINE_EXCEEDED, not a cancel.
    deadline_passed_ = absl::Now() >= deadline_;
    if (submitted_) front_->Cancel(engine_id_);
  }

  void OnDone() override {
    std::shared_ptr<GenerateCall> self;
    {
      absl::MutexLock lock(&mutex_);
      done_ = true;
      // gRPC's deadline timer can fire a hair before the wall clock reaches the deadline that
      // OnCancel compares with: a call still ending cancelled once the deadline has passed ended
      // by it (one CI run counted such a call CANCELLED).
      deadline_passed_ = deadline_passed_ || absl::Now() >= deadline_;
      if (deadline_passed_ && final_status_.error_code() == grpc::StatusCode::CANCELLED) {
        final_status_ = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the request's deadline passed");
      }
      metrics_->RecordRpc("Generate", GrpcCodeName(final_status_.error_code()));
      if (!request_id_.empty()) {
        GenerationFront::LogFinished({"grpc", request_id_, tenant_, variant_, variant_version_,
                                      absl::Status(static_cast<absl::StatusCode>(final_status_.error_code()),
                                                   final_status_.error_message()),
                                      usage_, absl::Now() - started_});
      }
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

  GenerationFront* const front_;
  telemetry::ServerMetrics* const metrics_;
  absl::Mutex mutex_;
  std::shared_ptr<GenerateCall> self_;  // released in OnDone
  std::string request_id_;
  std::string tenant_;
  const absl::Time started_ = absl::Now();
  engine::Usage usage_ ABSL_GUARDED_BY(mutex_);
  std::shared_ptr<auth::RequestLease> lease_ ABSL_GUARDED_BY(mutex_);  // until the request is over
  absl::Time deadline_ ABSL_GUARDED_BY(mutex_) = absl::InfiniteFuture();
  bool deadline_passed_ ABSL_GUARDED_BY(mutex_) = false;  // the call was cancelled at its deadline
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

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto call = std::make_shared<GenerateCall>(front_, metrics_);
  std::shared_ptr<auth::RequestLease> lease;
  absl::StatusOr<engine::EngineRequest> converted = [&]() -> absl::StatusOr<engine::EngineRequest> {
    ASSIGN_OR_RETURN(Access access, front_->Admit(AuthorizationOf(*context)));
    FrontRequest front_request;
    front_request.variant = request->variant();
    front_request.text = request->prompt();
    front_request.ids.assign(request->prompt_token_ids().begin(), request->prompt_token_ids().end());
    const v1::SamplingParams& sampling = request->sampling();
    engine::SamplingOptions& options = front_request.sampling;
    options.max_tokens = sampling.max_tokens();
    options.temperature = sampling.temperature();
    options.top_k = sampling.top_k();
    options.top_p = sampling.top_p() == 0.0f ? 1.0f : sampling.top_p();
    if (sampling.has_seed()) options.seed = sampling.seed();
    options.stop.assign(sampling.stop().begin(), sampling.stop().end());
    options.stop_token_ids.assign(sampling.stop_token_ids().begin(), sampling.stop_token_ids().end());
    options.ignore_eos = sampling.ignore_eos();
    options.logprobs = request->include_logprobs();
    options.n = sampling.n() == 0 ? 1 : sampling.n();
    options.repetition_penalty = sampling.repetition_penalty() == 0.0f ? 1.0f : sampling.repetition_penalty();
    options.presence_penalty = sampling.presence_penalty();
    options.frequency_penalty = sampling.frequency_penalty();
    options.min_p = sampling.min_p();
    for (const auto& [token, bias] : sampling.logit_bias()) options.logit_bias.emplace_back(token, bias);
    options.banned_token_ids.assign(sampling.banned_token_ids().begin(), sampling.banned_token_ids().end());
    options.allowed_token_ids.assign(sampling.allowed_token_ids().begin(), sampling.allowed_token_ids().end());
    front_request.bad_words.assign(sampling.bad_words().begin(), sampling.bad_words().end());
    front_request.request_id = request->request_id();
    front_request.deadline = DeadlineOf(*context);
    return front_->Prepare(access, std::move(front_request), &lease);
  }();
  call->Start(*context, std::move(converted), std::move(lease));
  return call.get();
}

grpc::ServerUnaryReactor* GenerationService::Score(grpc::CallbackServerContext* context,
                                                   const v1::ScoreRequest* request,
                                                   v1::ScoreResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::shared_ptr<auth::RequestLease> lease;
  absl::StatusOr<engine::EngineRequest> converted = [&]() -> absl::StatusOr<engine::EngineRequest> {
    ASSIGN_OR_RETURN(Access access, front_->Admit(AuthorizationOf(*context)));
    FrontRequest front_request;
    front_request.kind = engine::RequestKind::kScore;
    front_request.variant = request->variant();
    front_request.text = request->text();
    front_request.ids.assign(request->token_ids().begin(), request->token_ids().end());
    front_request.text_field = "text";
    front_request.ids_field = "token_ids";
    front_request.deadline = DeadlineOf(*context);
    return front_->Prepare(access, std::move(front_request), &lease);
  }();
  absl::Status status = converted.status();
  if (status.ok()) {
    status = front_->Submit(std::move(*converted),
                            std::make_shared<ScoreSink>(reactor, response, metrics_, std::move(lease)))
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
  const model::Tokenizer& tokenizer = front_->tokenizer();
  absl::StatusOr<std::vector<int32_t>> ids = [&]() -> absl::StatusOr<std::vector<int32_t>> {
    RETURN_IF_ERROR(front_->Admit(AuthorizationOf(*context)).status());
    RETURN_IF_ERROR(front_->CheckTextSize(request->text(), "text"));
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
