// GenerationService: deltaserve.v1.Generation over gRPC's callback API. Thin: it converts
// protobuf to engine requests, resolves the variant name, maps the gRPC deadline, and streams
// engine output back. Generate writes from OnWriteDone (one write in flight, the rest queued);
// OnCancel (client cancel, deadline, disconnect) cancels the engine request, which frees its KV
// blocks at the next iteration. Admission, variants and submission are GenerationFront's, shared
// with the HTTP API. Thread-safe; the front and metrics must outlive it.
#pragma once

#include "deltaserve/v1/generation.grpc.pb.h"
#include "server/api/generation_front.h"
#include "server/telemetry/server_metrics.h"

namespace deltaserve::api {

class GenerationService final : public deltaserve::v1::Generation::CallbackService {
 public:
  GenerationService(GenerationFront* front, telemetry::ServerMetrics* metrics) : front_(front), metrics_(metrics) {}

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
  GenerationFront* front_;
  telemetry::ServerMetrics* metrics_;
};

}  // namespace deltaserve::api
