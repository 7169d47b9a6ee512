#include "server/api/access.h"

#include <algorithm>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/common/retry_after.h"
#include "server/common/status_macros.h"

namespace deltaserve::api {

using control::NamespaceOf;

bool Access::OwnsNamespace(const std::string& name_space) const {
  return std::find(principal_.namespaces.begin(), principal_.namespaces.end(), name_space) !=
         principal_.namespaces.end();
}

bool Access::Sees(const std::string& name) const {
  const std::string name_space = NamespaceOf(name);
  return principal_.admin || name_space.empty() || OwnsNamespace(name_space);
}

bool Access::Owns(const std::string& name) const {
  const std::string name_space = NamespaceOf(name);
  return principal_.admin || (!name_space.empty() && OwnsNamespace(name_space));
}

absl::Status Access::CheckSee(const char* what, const std::string& name) const {
  if (Sees(name)) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat(what, " \"", name, "\" does not exist"));
}

absl::Status Access::CheckChange(const char* what, const std::string& name) const {
  if (absl::Status seen = CheckSee(what, name); !seen.ok()) return seen;
  if (Owns(name)) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat(what, " \"", name, "\" is shared; only an admin may change it"));
}

absl::Status Access::CheckCreate(const char* what, const std::string& name) const {
  if (Owns(name)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("tenant \"", principal_.tenant, "\" may create a ", what,
                                                  " only as NAMESPACE/NAME with NAMESPACE one of: ",
                                                  absl::StrJoin(principal_.namespaces, ", ")));
}

std::string_view AuthorizationOf(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto found = metadata.find("authorization");
  return found == metadata.end() ? std::string_view() : std::string_view(found->second.data(), found->second.size());
}

absl::StatusOr<Access> Gatekeeper::Admit(const grpc::ServerContextBase& context) const {
  return AdmitAuthorization(AuthorizationOf(context));
}

absl::StatusOr<Access> Gatekeeper::AdmitAuthorization(std::string_view authorization) const {
  absl::StatusOr<auth::Principal> principal = authenticator_->Authenticate(authorization);
  if (!principal.ok()) return principal.status();
  return Access(std::move(*principal));
}

void Gatekeeper::AddPushback(grpc::ServerContextBase& context, const absl::Status& status) {
  std::optional<absl::Duration> retry_after = common::RetryAfter(status);
  if (retry_after.has_value()) {
    context.AddTrailingMetadata("grpc-retry-pushback-ms", std::to_string(absl::ToInt64Milliseconds(*retry_after)));
  }
}

absl::Status StorageBudget::Take(int64_t bytes) {
  stored_ += bytes;
  if (limit_ <= 0 || stored_ <= limit_) return absl::OkStatus();
  return common::ResourceExhaustedWithRetry(
      absl::StrCat("tenant \"", tenant_, "\" would store more than its max_stored_bytes quota of ", limit_,
                   " bytes; delete variants or datasets first"),
      std::nullopt);
}

absl::StatusOr<StorageBudget> Gatekeeper::CheckStorage(const Access& access, bool adds_variant) const {
  const auth::Principal& principal = access.principal();
  const int64_t max_variants = principal.quotas.max_variants();
  const int64_t max_bytes = principal.quotas.max_stored_bytes();
  if ((max_variants <= 0 || !adds_variant) && max_bytes <= 0) return StorageBudget(principal.tenant, 0, 0);
  int64_t variants = 0;
  int64_t bytes = 0;
  constexpr size_t kAll = std::numeric_limits<int32_t>::max();
  for (const std::string& name_space : principal.namespaces) {
    for (const control::VariantStatus& held : holdings_.variants->List(name_space + "/", "", kAll)) {
      ++variants;
      bytes += held.variant->bytes;
    }
    ASSIGN_OR_RETURN(std::vector<control::DatasetRecord> datasets, holdings_.datasets->List(name_space + "/", "", kAll));
    for (const control::DatasetRecord& dataset : datasets) bytes += dataset.size_bytes;
  }
  if (adds_variant && max_variants > 0 && variants >= max_variants) {
    return common::ResourceExhaustedWithRetry(absl::StrCat("tenant \"", principal.tenant, "\" stores ", variants,
                                                           " variants, its max_variants quota; delete one first"),
                                              std::nullopt);
  }
  if (max_bytes > 0 && bytes >= max_bytes) {
    return common::ResourceExhaustedWithRetry(
        absl::StrCat("tenant \"", principal.tenant, "\" stores ", bytes, " bytes, at its max_stored_bytes quota of ",
                     max_bytes, "; delete variants or datasets first"),
        std::nullopt);
  }
  return StorageBudget(principal.tenant, max_bytes, bytes);
}

absl::Status Gatekeeper::CheckJobs(const Access& access) const {
  const auth::Principal& principal = access.principal();
  const int64_t limit = principal.quotas.max_running_jobs();
  if (limit <= 0) return absl::OkStatus();
  int64_t active = 0;
  for (control::JobState state : {control::JobState::kQueued, control::JobState::kRunning}) {
    control::JobFilter filter;
    filter.state = state;
    for (const control::JobRecord& job : holdings_.jobs->List(filter, 0, 100000)) {
      active += access.Owns(job.output_variant) ? 1 : 0;
    }
  }
  if (active < limit) return absl::OkStatus();
  return common::ResourceExhaustedWithRetry(
      absl::StrCat("tenant \"", principal.tenant, "\" has ", active,
                   " jobs queued or running, its max_running_jobs quota; retry when one ends"),
      absl::Seconds(5));
}

absl::Status Gatekeeper::Change(const grpc::ServerContextBase& context, const char* rpc, const char* what,
                               const std::string& name, const std::function<absl::Status()>& change) const {
  absl::StatusOr<Access> access = Admit(context);
  absl::Status status = access.status();
  if (status.ok()) status = access->CheckChange(what, name);
  if (status.ok()) status = change();
  Audit(access, rpc, name, status);
  return status;
}

void Gatekeeper::Audit(const absl::StatusOr<Access>& caller, const char* rpc, const std::string& target,
                       const absl::Status& outcome) const {
  audit_->Record(caller.ok() ? caller->Tenant() : "?", rpc, target, outcome);
}

}  // namespace deltaserve::api
