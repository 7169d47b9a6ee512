#include "server/api/variants_service.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/api/deadline.h"
#include "server/api/grpc_status.h"
#include "server/api/page_size.h"
#include "server/common/status_macros.h"

namespace deltaserve::api {
namespace {

namespace v1 = deltaserve::v1;

constexpr absl::Duration kDefaultDrainTimeout = absl::Seconds(60);

v1::Residency ToProto(engine::AdapterTier tier) {
  switch (tier) {
    case engine::AdapterTier::kDevice: return v1::DEVICE;
    case engine::AdapterTier::kHost: return v1::HOST;
    case engine::AdapterTier::kDisk: return v1::DISK;
  }
  return v1::RESIDENCY_UNSPECIFIED;
}

v1::VariantKind KindToProto(const std::string& kind) {
  v1::VariantKind value;
  return v1::VariantKind_Parse(kind, &value) ? value : v1::VARIANT_KIND_UNSPECIFIED;
}

void ToProto(const control::VariantStatus& status, v1::Variant* out) {
  const control::Variant& variant = *status.variant;
  out->set_name(variant.name);
  out->set_kind(KindToProto(variant.lineage.kind));
  for (const deltas::ModuleRank& module : variant.ranks) {
    v1::ModuleRank* rank = out->add_ranks();
    rank->set_module(module.module);
    rank->set_rank(static_cast<int32_t>(module.rank));
    rank->set_layers(static_cast<int32_t>(module.layers));
  }
  out->set_size_bytes(variant.bytes);
  out->set_residency(ToProto(status.residency.tier));
  out->set_pinned(status.residency.pinned);
  const int64_t nanos = absl::ToUnixNanos(variant.created);
  out->mutable_created()->set_seconds(nanos / 1000000000);
  out->mutable_created()->set_nanos(static_cast<int32_t>(nanos % 1000000000));
  v1::Lineage* lineage = out->mutable_lineage();
  for (const std::string& parent : variant.lineage.parents) lineage->add_parents(parent);
  lineage->set_recipe_json(variant.lineage.recipe_json);
  lineage->set_job_id(variant.lineage.job_id);
  out->set_evaluation_json(variant.lineage.evaluation_json);
  out->set_base_model(variant.base_model);
  out->set_version(variant.version);
  out->set_active_requests(status.residency.users);
  out->set_uploaded(variant.owned);
  out->set_state(variant.state == "READY" ? v1::READY : v1::BROKEN);
  out->set_state_reason(variant.broken_reason);
}

// Redact keeps other tenants' names out of a variant the caller may see: when it was built from
// variants the caller cannot see (an admin's shared merge of a tenant's adapter), those parents
// are dropped and the recipe and evaluation, which name its inputs, are withheld.
void Redact(const Access& access, v1::Variant* out) {
  v1::Lineage* lineage = out->mutable_lineage();
  std::vector<std::string> visible;
  for (const std::string& parent : lineage->parents()) {
    if (access.Sees(parent)) visible.push_back(parent);
  }
  if (static_cast<int>(visible.size()) == lineage->parents_size()) return;
  lineage->clear_parents();
  for (const std::string& parent : visible) lineage->add_parents(parent);
  lineage->set_recipe_json(R"({"withheld":"built from variants you cannot see"})");
  out->set_evaluation_json("{}");
}

}  // namespace

VariantsService::VariantsService(control::VariantRegistry* registry, telemetry::ServerMetrics* metrics,
                                 const ServingState* state, const Gatekeeper* gate, std::string base_model_name)
    : registry_(registry),
      metrics_(metrics),
      state_(state),
      gate_(gate),
      base_model_name_(std::move(base_model_name)) {}

grpc::Status VariantsService::Finish(const char* method, const absl::Status& status) {
  grpc::Status converted = ToGrpcStatus(status);
  metrics_->RecordRpc(method, GrpcCodeName(converted.error_code()));
  return converted;
}

grpc::Status VariantsService::RegisterAdapter(grpc::ServerContext* context, const v1::RegisterAdapterRequest* request,
                                              v1::Variant* response) {
  absl::StatusOr<Access> access = gate_->Admit(*context);
  absl::StatusOr<control::VariantStatus> status = [&]() -> absl::StatusOr<control::VariantStatus> {
    if (!access.ok()) return access.status();
    RETURN_IF_ERROR(access->CheckCreate("variant", request->name()));
    RETURN_IF_ERROR(gate_->CheckStorage(*access, true).status());
    return registry_->RegisterAdapter(request->name(), request->path());
  }();
  if (status.ok()) ToProto(*status, response);
  gate_->Audit(access, "RegisterAdapter", request->name(), status.status());
  return Finish("RegisterAdapter", status.status());
}

absl::Status VariantsService::Upload(const Access& access, grpc::ServerReader<v1::UploadAdapterChunk>* reader,
                                     v1::Variant* response, std::string* name) {
  if (state_->draining()) return absl::UnavailableError("the server is shutting down");
  v1::UploadAdapterChunk chunk;
  if (!reader->Read(&chunk)) return absl::InvalidArgumentError("the upload is empty: send a header first");
  if (!chunk.has_header()) {
    return absl::InvalidArgumentError("the first message of an upload must be the header (name)");
  }
  const v1::UploadAdapterHeader& header = chunk.header();
  *name = header.name();
  RETURN_IF_ERROR(access.CheckCreate("variant", *name));
  ASSIGN_OR_RETURN(StorageBudget budget, gate_->CheckStorage(access, true));
  if (!header.base_model().empty() && header.base_model() != base_model_name_) {
    return absl::FailedPreconditionError(absl::StrCat("the adapter is for base model \"",
                                                      header.base_model(), "\"; this server serves \"",
                                                      base_model_name_, "\""));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<control::AdapterUpload> upload, registry_->BeginUpload(header.name()));
  while (reader->Read(&chunk)) {
    if (!chunk.has_file()) {
      return absl::InvalidArgumentError("only the first message of an upload may be a header");
    }
    RETURN_IF_ERROR(budget.Take(static_cast<int64_t>(chunk.file().data().size())));
    RETURN_IF_ERROR(upload->Append(chunk.file().file_name(), chunk.file().data()));
  }
  ASSIGN_OR_RETURN(control::VariantStatus status, registry_->CommitUpload(std::move(upload)));
  ToProto(status, response);
  return absl::OkStatus();
}

grpc::Status VariantsService::UploadAdapter(grpc::ServerContext* context,
                                            grpc::ServerReader<v1::UploadAdapterChunk>* reader,
                                            v1::Variant* response) {
  absl::StatusOr<Access> access = gate_->Admit(*context);
  std::string name;
  absl::Status status = access.ok() ? Upload(*access, reader, response, &name) : access.status();
  // A client that went away mid-stream ends Read early: its partial upload must not count.
  if (status.ok() && context->IsCancelled()) status = absl::CancelledError("the upload was cancelled");
  gate_->Audit(access, "UploadAdapter", name, status);
  return Finish("UploadAdapter", status);
}

grpc::Status VariantsService::GetVariant(grpc::ServerContext* context, const v1::GetVariantRequest* request,
                                         v1::Variant* response) {
  absl::StatusOr<Access> access = gate_->Admit(*context);
  absl::StatusOr<control::VariantStatus> status = [&]() -> absl::StatusOr<control::VariantStatus> {
    if (!access.ok()) return access.status();
    RETURN_IF_ERROR(access->CheckSee("variant", request->name()));
    return registry_->Get(request->name());
  }();
  if (status.ok()) {
    ToProto(*status, response);
    Redact(*access, response);
  }
  return Finish("GetVariant", status.status());
}

grpc::Status VariantsService::ListVariants(grpc::ServerContext* context, const v1::ListVariantsRequest* request,
                                           v1::ListVariantsResponse* response) {
  absl::Status status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Access access, gate_->Admit(*context));
    ASSIGN_OR_RETURN(const size_t page_size, PageSize(request->page_size()));
    // One more than the page tells whether another page follows.
    ASSIGN_OR_RETURN(
        std::vector<control::VariantStatus> page,
        VisiblePage<control::VariantStatus>(
            [&](const std::string& after, size_t limit) -> absl::StatusOr<std::vector<control::VariantStatus>> {
              return registry_->List(request->prefix(), after, limit);
            },
            [](const control::VariantStatus& status) { return status.variant->name; },
            [&](const control::VariantStatus& status) { return access.Sees(status.variant->name); },
            request->page_token(), page_size + 1));
    const bool more = page.size() > page_size;
    if (more) page.pop_back();
    for (const control::VariantStatus& variant : page) {
      v1::Variant* out = response->add_variants();
      ToProto(variant, out);
      Redact(access, out);
    }
    if (more) response->set_next_page_token(page.back().variant->name);
    return absl::OkStatus();
  }();
  return Finish("ListVariants", status);
}

grpc::Status VariantsService::DeleteVariant(grpc::ServerContext* context,
                                            const v1::DeleteVariantRequest* request,
                                            v1::DeleteVariantResponse*) {
  absl::Time deadline = DeadlineOf(*context);
  if (deadline == absl::InfiniteFuture()) deadline = registry_->clock().Now() + kDefaultDrainTimeout;
  absl::Status status = gate_->Change(*context, "DeleteVariant", "variant", request->name(), [&] {
    return registry_->Delete(request->name(), request->drain(), deadline);
  });
  return Finish("DeleteVariant", status);
}

grpc::Status VariantsService::PinVariant(grpc::ServerContext* context, const v1::PinVariantRequest* request,
                                         v1::Variant* response) {
  absl::Status status = gate_->Change(*context, "PinVariant", "variant", request->name(), [&]() -> absl::Status {
    ASSIGN_OR_RETURN(control::VariantStatus pinned, registry_->Pin(request->name()));
    ToProto(pinned, response);
    return absl::OkStatus();
  });
  return Finish("PinVariant", status);
}

grpc::Status VariantsService::UnpinVariant(grpc::ServerContext* context, const v1::UnpinVariantRequest* request,
                                           v1::Variant* response) {
  absl::Status status = gate_->Change(*context, "UnpinVariant", "variant", request->name(), [&]() -> absl::Status {
    ASSIGN_OR_RETURN(control::VariantStatus unpinned, registry_->Unpin(request->name()));
    ToProto(unpinned, response);
    return absl::OkStatus();
  });
  return Finish("UnpinVariant", status);
}

}  // namespace deltaserve::api
