// DatasetsService: deltaserve.v1.Datasets over gRPC's synchronous API (uploads are few and
// stream; the sync thread pool suits them). Thin: it converts protobuf to DatasetStore calls and
// back; every rule (line validation, names, sharing of files with jobs) lives in the store.
// Callers see and change datasets as Access says; uploads and deletes are audited.
// Thread-safe; the store, metrics and state must outlive it.
#pragma once

#include "deltaserve/v1/datasets.grpc.pb.h"
#include "server/api/access.h"
#include "server/api/serving_state.h"
#include "server/control/dataset_store.h"
#include "server/telemetry/server_metrics.h"

namespace deltaserve::api {

class DatasetsService final : public deltaserve::v1::Datasets::Service {
 public:
  DatasetsService(control::DatasetStore* datasets, telemetry::ServerMetrics* metrics, const ServingState* state,
                  const Gatekeeper* gate)
      : datasets_(datasets), metrics_(metrics), state_(state), gate_(gate) {}

  grpc::Status UploadDataset(grpc::ServerContext* context,
                             grpc::ServerReader<deltaserve::v1::UploadDatasetChunk>* reader,
                             deltaserve::v1::Dataset* response) override;
  grpc::Status GetDataset(grpc::ServerContext* context, const deltaserve::v1::GetDatasetRequest* request,
                          deltaserve::v1::Dataset* response) override;
  grpc::Status ListDatasets(grpc::ServerContext* context, const deltaserve::v1::ListDatasetsRequest* request,
                            deltaserve::v1::ListDatasetsResponse* response) override;
  grpc::Status DeleteDataset(grpc::ServerContext* context, const deltaserve::v1::DeleteDatasetRequest* request,
                             deltaserve::v1::DeleteDatasetResponse* response) override;

 private:
  grpc::Status Finish(const char* method, const absl::Status& status);
  absl::Status Upload(const Access& access, grpc::ServerReader<deltaserve::v1::UploadDatasetChunk>* reader,
                      deltaserve::v1::Dataset* response, std::string* name);

  control::DatasetStore* datasets_;
  telemetry::ServerMetrics* metrics_;
  const ServingState* state_;
  const Gatekeeper* gate_;
};

}  // namespace deltaserve::api
