#include "server/api/access.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

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

absl::StatusOr<Access> Gatekeeper::Admit(const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  auto found = metadata.find("authorization");
  const std::string_view value =
      found == metadata.end() ? std::string_view() : std::string_view(found->second.data(), found->second.size());
  absl::StatusOr<auth::Principal> principal = authenticator_->Authenticate(value);
  if (!principal.ok()) return principal.status();
  return Access(std::move(*principal));
}

void Gatekeeper::AddPushback(grpc::ServerContextBase& context, const absl::Status& status) {
  std::optional<absl::Duration> retry_after = auth::RetryAfter(status);
  if (retry_after.has_value()) {
    context.AddTrailingMetadata("grpc-retry-pushback-ms", std::to_string(absl::ToInt64Milliseconds(*retry_after)));
  }
}

absl::Status CheckVariantQuota(const Access& access, const control::VariantRegistry& registry) {
  const auth::Principal& principal = access.principal();
  const int64_t limit = principal.quotas.max_variants;
  if (limit <= 0) return absl::OkStatus();
  int64_t stored = 0;
  for (const std::string& name_space : principal.namespaces) {
    stored += static_cast<int64_t>(registry.List(name_space + "/", "", static_cast<size_t>(limit) + 1).size());
  }
  if (stored < limit) return absl::OkStatus();
  return auth::QuotaExceeded(absl::StrCat("tenant \"", principal.tenant, "\" stores ", stored,
                                          " variants, its max_variants quota; delete one first"),
                             std::nullopt);
}

absl::Status CheckJobQuota(const Access& access, const control::JobRunner& runner) {
  const auth::Principal& principal = access.principal();
  const int64_t limit = principal.quotas.max_running_jobs;
  if (limit <= 0) return absl::OkStatus();
  int64_t active = 0;
  for (const char* state : {"QUEUED", "RUNNING"}) {
    control::JobFilter filter;
    filter.state = state;
    for (const control::JobRecord& job : runner.List(filter, 0, 100000)) active += access.Owns(job.output_variant) ? 1 : 0;
  }
  if (active < limit) return absl::OkStatus();
  return auth::QuotaExceeded(absl::StrCat("tenant \"", principal.tenant, "\" has ", active,
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
