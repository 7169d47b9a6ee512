// Access: what the caller of an RPC may see and change, from its authenticated Principal.
//   - Names are "NAMESPACE/NAME" or "NAME". A tenant sees the variants and datasets of its own
//     namespaces and the shared ones (no namespace: registered by admins or --adapter-dir), and
//     only its own jobs (those writing into its namespaces).
//   - It may create, change and delete only within its own namespaces; shared names are the
//     admins'.
//   - What a caller may not see does not exist for it: NOT_FOUND, worded as for a missing name,
//     so that other tenants' names never leak. Changing something visible but not owned (a
//     shared variant) is PERMISSION_DENIED.
// Admins, and everyone on an open server (no tenants), see and change everything.
//   ASSIGN_OR_RETURN(Access access, gate_->Admit(*context));
//   RETURN_IF_ERROR(access.CheckChange("variant", request->name()));
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"
#include "server/auth/audit_log.h"
#include "server/auth/authenticator.h"
#include "server/auth/quota_tracker.h"
#include "server/control/dataset_store.h"
#include "server/control/job_runner.h"
#include "server/control/variant_registry.h"

namespace deltaserve::api {

class Access {
 public:
  explicit Access(auth::Principal principal) : principal_(std::move(principal)) {}

  // Sees: whether a variant or dataset name is visible. Owns: whether it may be changed.
  bool Sees(const std::string& name) const;
  bool Owns(const std::string& name) const;
  // CheckSee: NOT_FOUND "<what> \"NAME\" does not exist" when not visible.
  absl::Status CheckSee(const char* what, const std::string& name) const;
  // CheckChange: CheckSee, then PERMISSION_DENIED when visible but not owned. For a name that
  // does not exist yet, use CheckCreate.
  absl::Status CheckChange(const char* what, const std::string& name) const;
  // CheckCreate: PERMISSION_DENIED naming the namespaces the caller may create in.
  absl::Status CheckCreate(const char* what, const std::string& name) const;

  const auth::Principal& principal() const { return principal_; }
  // Tenant: the tenant's name for audit lines ("-" on an open server).
  std::string Tenant() const { return principal_.tenant.empty() ? "-" : principal_.tenant; }

 private:
  bool OwnsNamespace(const std::string& name_space) const;
  auth::Principal principal_;
};

// What the storage and job quotas count: the variants, datasets and jobs the server holds.
struct Holdings {
  const control::VariantRegistry* variants = nullptr;
  const control::DatasetStore* datasets = nullptr;
  const control::JobRunner* jobs = nullptr;
};

// StorageBudget: the bytes a caller may still store (its max_stored_bytes quota less what its
// namespaces hold), counted down as an upload's bytes arrive.
class StorageBudget {
 public:
  StorageBudget(std::string tenant, int64_t limit, int64_t stored)
      : tenant_(std::move(tenant)), limit_(limit), stored_(stored) {}
  // Take: RESOURCE_EXHAUSTED naming the quota once the bytes taken pass what it leaves.
  absl::Status Take(int64_t bytes);

 private:
  std::string tenant_;
  int64_t limit_;  // 0 = unlimited
  int64_t stored_;
};

// AuthorizationOf: the "authorization" metadata of a call ("" when none).
std::string_view AuthorizationOf(const grpc::ServerContextBase& context);

// Gatekeeper: what every service does at the door: authenticate the caller of an RPC from its
// "authorization" metadata (UNAUTHENTICATED on failure), check its quotas, and write the audit
// line of a mutating RPC. Everything it points to must outlive it.
class Gatekeeper {
 public:
  Gatekeeper(const auth::Authenticator* authenticator, auth::AuditLog* audit, auth::QuotaTracker* quotas,
             Holdings holdings)
      : authenticator_(authenticator), audit_(audit), quotas_(quotas), holdings_(holdings) {}
  absl::StatusOr<Access> Admit(const grpc::ServerContextBase& context) const;
  // AdmitAuthorization: the same from an authorization value ("Bearer KEY", "" when none).
  absl::StatusOr<Access> AdmitAuthorization(std::string_view authorization) const;
  // Lease: one Generate/Score request of the caller against its serving quotas.
  absl::StatusOr<std::shared_ptr<auth::RequestLease>> Lease(const Access& access) const {
    return quotas_->Admit(access.principal());
  }
  // CheckStorage: before storing something new in the caller's namespaces (a variant when
  // `adds_variant`, else a dataset or a new version): RESOURCE_EXHAUSTED when its namespaces
  // already hold max_variants variants or max_stored_bytes bytes; otherwise the budget an
  // upload draws on.
  absl::StatusOr<StorageBudget> CheckStorage(const Access& access, bool adds_variant) const;
  // CheckJobs: RESOURCE_EXHAUSTED when the caller has max_running_jobs jobs queued or running.
  absl::Status CheckJobs(const Access& access) const;
  // AddPushback tells gRPC clients when to retry a call refused over a quota
  // (grpc-retry-pushback-ms trailing metadata); nothing for other errors.
  static void AddPushback(grpc::ServerContextBase& context, const absl::Status& status);
  // Change runs a mutating RPC on one existing named thing (`what`: "variant", "dataset"):
  // admit the caller, check it may change the name (Access::CheckChange), run `change`, and
  // audit the outcome, which it returns.
  absl::Status Change(const grpc::ServerContextBase& context, const char* rpc, const char* what,
                      const std::string& name, const std::function<absl::Status()>& change) const;
  // Audit records a mutating RPC of `caller` (an error when it was not authenticated).
  void Audit(const absl::StatusOr<Access>& caller, const char* rpc, const std::string& target,
             const absl::Status& outcome) const;

 private:
  const auth::Authenticator* authenticator_;
  auth::AuditLog* audit_;
  auth::QuotaTracker* quotas_;
  Holdings holdings_;
};

}  // namespace deltaserve::api
