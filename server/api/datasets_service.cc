#include "server/api/datasets_service.h"

#include "absl/strings/str_cat.h"
#include "server/api/grpc_status.h"
#include "server/api/page_size.h"
#include "server/common/status_macros.h"

namespace deltaserve::api {
namespace {

namespace v1 = deltaserve::v1;

void ToProto(const control::DatasetRecord& record, v1::Dataset* out) {
  out->set_name(record.name);
  out->set_sha256(record.sha256);
  out->set_rows(record.rows);
  out->set_text_rows(record.text_rows);
  out->set_prompt_completion_rows(record.prompt_completion_rows);
  out->set_size_bytes(record.size_bytes);
  out->mutable_created()->set_seconds(record.created_unix_nanos / 1000000000);
  out->mutable_created()->set_nanos(static_cast<int32_t>(record.created_unix_nanos % 1000000000));
}

}  // namespace

grpc::Status DatasetsService::Finish(const char* method, const absl::Status& status) {
  grpc::Status converted = ToGrpcStatus(status);
  metrics_->RecordRpc(method, GrpcCodeName(converted.error_code()));
  return converted;
}

absl::Status DatasetsService::Upload(const Access& access, grpc::ServerReader<v1::UploadDatasetChunk>* reader,
                                     v1::Dataset* response, std::string* name) {
  if (state_->draining()) return absl::UnavailableError("the server is shutting down");
  v1::UploadDatasetChunk chunk;
  if (!reader->Read(&chunk)) return absl::InvalidArgumentError("the upload is empty: send a header first");
  if (!chunk.has_header()) return absl::InvalidArgumentError("the first message of an upload must be the header (name)");
  *name = chunk.header().name();
  RETURN_IF_ERROR(access.CheckCreate("dataset", *name));
  ASSIGN_OR_RETURN(StorageBudget budget, gate_->CheckStorage(access, false));
  ASSIGN_OR_RETURN(std::unique_ptr<control::DatasetUpload> upload, datasets_->BeginUpload(chunk.header().name()));
  while (reader->Read(&chunk)) {
    if (chunk.has_header()) return absl::InvalidArgumentError("only the first message of an upload may be a header");
    RETURN_IF_ERROR(budget.Take(static_cast<int64_t>(chunk.data().size())));
    RETURN_IF_ERROR(upload->Append(chunk.data()));
  }
  ASSIGN_OR_RETURN(control::DatasetRecord record, datasets_->Commit(std::move(upload)));
  ToProto(record, response);
  return absl::OkStatus();
}

grpc::Status DatasetsService::UploadDataset(grpc::ServerContext* context,
                                            grpc::ServerReader<v1::UploadDatasetChunk>* reader,
                                            v1::Dataset* response) {
  absl::StatusOr<Access> access = gate_->Admit(*context);
  std::string name;
  absl::Status status = access.ok() ? Upload(*access, reader, response, &name) : access.status();
  // A client that went away mid-stream ends Read early: its partial upload must not count.
  if (status.ok() && context->IsCancelled()) status = absl::CancelledError("the upload was cancelled");
  gate_->Audit(access, "UploadDataset", name, status);
  return Finish("UploadDataset", status);
}

grpc::Status DatasetsService::GetDataset(grpc::ServerContext* context, const v1::GetDatasetRequest* request,
                                         v1::Dataset* response) {
  absl::StatusOr<control::DatasetRecord> record = [&]() -> absl::StatusOr<control::DatasetRecord> {
    ASSIGN_OR_RETURN(Access access, gate_->Admit(*context));
    RETURN_IF_ERROR(access.CheckSee("dataset", request->name()));
    return datasets_->Get(request->name());
  }();
  if (record.ok()) ToProto(*record, response);
  return Finish("GetDataset", record.status());
}

grpc::Status DatasetsService::ListDatasets(grpc::ServerContext* context, const v1::ListDatasetsRequest* request,
                                           v1::ListDatasetsResponse* response) {
  absl::Status status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Access access, gate_->Admit(*context));
    ASSIGN_OR_RETURN(const size_t page_size, PageSize(request->page_size()));
    // One more than the page tells whether another page follows.
    ASSIGN_OR_RETURN(std::vector<control::DatasetRecord> page,
                     VisiblePage<control::DatasetRecord>(
                         [&](const std::string& after, size_t limit) { return datasets_->List(request->prefix(), after, limit); },
                         [](const control::DatasetRecord& record) { return record.name; },
                         [&](const control::DatasetRecord& record) { return access.Sees(record.name); },
                         request->page_token(), page_size + 1));
    const bool more = page.size() > page_size;
    if (more) page.pop_back();
    for (const control::DatasetRecord& record : page) ToProto(record, response->add_datasets());
    if (more) response->set_next_page_token(page.back().name);
    return absl::OkStatus();
  }();
  return Finish("ListDatasets", status);
}

grpc::Status DatasetsService::DeleteDataset(grpc::ServerContext* context, const v1::DeleteDatasetRequest* request,
                                            v1::DeleteDatasetResponse*) {
  absl::Status status = gate_->Change(*context, "DeleteDataset", "dataset", request->name(),
                                      [&] { return datasets_->Delete(request->name()); });
  return Finish("DeleteDataset", status);
}

}  // namespace deltaserve::api
