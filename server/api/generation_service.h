// GenerationService: deltaserve.v1.Generation over gRPC's callback API. Thin: it converts
// protobuf to engine requests, resolves the variant name, maps the gRPC deadline, and streams
// engine output back. Generate writes from OnWriteDone (one write in flight, the rest queued);
// OnCancel (client cancel, deadline, disconnect) cancels the engine request, which frees its KV
// blocks at the next iteration. Callers are admitted by the Gatekeeper and may name only the
// variants Access lets them see. Thread-safe; the engine, metrics, state and gatekeeper must
// outlive it.
#pragma once

#include <atomic>
#include <string>

#include "deltaserve/v1/generation.grpc.pb.h"
#include "server/api/access.h"
#include "server/api/serving_state.h"
#include "server/control/variant_registry.h"
#include "server/engine/engine.h"
#include "server/telemetry/server_metrics.h"

namespace deltaserve::api {

class GenerationService final : public deltaserve::v1::Generation::CallbackService {
 public:
  // base_model_name: the name by which callers may address the base model (besides "").
  GenerationService(engine::Engine* engine, const control::VariantRegistry* variants,
                    telemetry::ServerMetrics* metrics, const ServingState* state,
                    const Gatekeeper* gate, std::string base_model_name);

  grpc::ServerWriteReactor<deltaserve::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context,
      const deltaserve::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const deltaserve::v1::ScoreRequest* request,
                                  deltaserve::v1::ScoreResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const deltaserve::v1::TokenizeRequest* request,
                                     deltaserve::v1::TokenizeResponse* response) override;

 private:
  absl::Status CheckServing() const;
  // ResolveVariant returns the variant (null for the base model) or NOT_FOUND.
  absl::StatusOr<std::shared_ptr<const control::Variant>> ResolveVariant(const std::string& variant) const;
  // NewEngineRequest does what Generate and Score share: the serving check, the caller and its
  // quota lease (into *lease), the variant, the
  // input (exactly one of text and ids) and the deadline.
  absl::StatusOr<engine::EngineRequest> NewEngineRequest(
      engine::RequestKind kind, const grpc::CallbackServerContext& context,
      const std::string& variant, const std::string& text,
      const google::protobuf::RepeatedField<int32_t>& ids, const char* text_field,
      const char* ids_field, std::shared_ptr<auth::RequestLease>* lease) const;

  engine::Engine* engine_;
  const control::VariantRegistry* variants_;
  telemetry::ServerMetrics* metrics_;
  const ServingState* state_;
  const Gatekeeper* gate_;
  std::string base_model_name_;
  // Numbers request ids for callers that send none.
  std::atomic<uint64_t> next_request_number_{1};
};

}  // namespace deltaserve::api
