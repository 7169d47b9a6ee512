// VariantsService: deltaserve.v1.Variants over gRPC's synchronous API (management calls are
// few, and DeleteVariant with drain may wait, which the sync thread pool allows). Thin: it
// converts protobuf to VariantRegistry calls and back; every rule lives in the registry. Callers
// see and change variants as Access says; every mutating call is audited.
// Thread-safe; the registry, metrics and state must outlive it.
#pragma once

#include <string>

#include "deltaserve/v1/variants.grpc.pb.h"
#include "server/api/access.h"
#include "server/api/serving_state.h"
#include "server/control/variant_registry.h"
#include "server/telemetry/server_metrics.h"

namespace deltaserve::api {

class VariantsService final : public deltaserve::v1::Variants::Service {
 public:
  VariantsService(control::VariantRegistry* registry, telemetry::ServerMetrics* metrics,
                  const ServingState* state, const Gatekeeper* gate, std::string base_model_name);

  grpc::Status RegisterAdapter(grpc::ServerContext* context,
                               const deltaserve::v1::RegisterAdapterRequest* request,
                               deltaserve::v1::Variant* response) override;
  grpc::Status UploadAdapter(grpc::ServerContext* context,
                             grpc::ServerReader<deltaserve::v1::UploadAdapterChunk>* reader,
                             deltaserve::v1::Variant* response) override;
  grpc::Status GetVariant(grpc::ServerContext* context, const deltaserve::v1::GetVariantRequest* request,
                          deltaserve::v1::Variant* response) override;
  grpc::Status ListVariants(grpc::ServerContext* context,
                            const deltaserve::v1::ListVariantsRequest* request,
                            deltaserve::v1::ListVariantsResponse* response) override;
  grpc::Status DeleteVariant(grpc::ServerContext* context,
                             const deltaserve::v1::DeleteVariantRequest* request,
                             deltaserve::v1::DeleteVariantResponse* response) override;
  grpc::Status PinVariant(grpc::ServerContext* context, const deltaserve::v1::PinVariantRequest* request,
                          deltaserve::v1::Variant* response) override;
  grpc::Status UnpinVariant(grpc::ServerContext* context,
                            const deltaserve::v1::UnpinVariantRequest* request,
                            deltaserve::v1::Variant* response) override;

 private:
  // Finish records the RPC in the metrics and converts the status.
  grpc::Status Finish(const char* method, const absl::Status& status);
  absl::Status Upload(const Access& access, grpc::ServerReader<deltaserve::v1::UploadAdapterChunk>* reader,
                      deltaserve::v1::Variant* response, std::string* name);

  control::VariantRegistry* registry_;
  telemetry::ServerMetrics* metrics_;
  const ServingState* state_;
  const Gatekeeper* gate_;
  std::string base_model_name_;
};

}  // namespace deltaserve::api
