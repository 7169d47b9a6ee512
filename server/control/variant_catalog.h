// VariantCatalog: the variants by name, in memory (VariantRegistry keeps the durable rows in
// CatalogStore and loads them here at start-up). Names are [a-z0-9][a-z0-9._-]{0,63}, optionally prefixed by
// "namespace/" with the same rule. A variant's deltas live in the engine's AdapterCache under
// its adapter_id. Thread-safe; Find returns a shared pointer, so a variant removed later stays
// valid for whoever holds it.
//   RETURN_IF_ERROR(catalog.Register(std::move(variant)));
//   std::shared_ptr<const Variant> variant = catalog.Find("acme/support-bot");
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/deltas/delta_set.h"

namespace deltaserve::control {

// Where a variant came from; jobs fill it for their outputs.
struct VariantLineage {
  std::string kind = "ADAPTER";  // ADAPTER, MERGE, EDIT, UNLEARN, FINETUNE
  std::vector<std::string> parents;
  std::string recipe_json = "{}";
  std::string job_id;
  std::string evaluation_json = "{}";
};

struct Variant {
  std::string name;
  // Its PEFT directory; `owned` when it lies in the data dir (uploaded), so deleting the
  // variant deletes the directory too.
  std::string path;
  bool owned = false;
  uint64_t adapter_id = 0;  // in the engine's AdapterCache
  int64_t bytes = 0;
  std::vector<deltas::ModuleRank> ranks;
  // The base its adapter_config.json names (base_model_name_or_path; "" when none).
  std::string base_model;
  absl::Time created;
  // READY (servable), or BROKEN (its files are gone or invalid; adapter_id is 0).
  std::string state = "READY";
  std::string broken_reason;
  // Kind, lineage and evaluation, as jobs record them.
  VariantLineage lineage;
  // 1 when registered; a replace_target publishes version N+1 under the same name, and a kept
  // previous version is named "NAME@N".
  int64_t version = 1;
};

// NamespaceOf: the namespace of a variant or dataset name ("acme" for "acme/bot"; "" for a
// name without one).
std::string NamespaceOf(const std::string& name);

// CheckServable: OK for a READY variant; FAILED_PRECONDITION naming its state and why
// otherwise (a BROKEN variant has no adapter to serve).
absl::Status CheckServable(const Variant& variant);

class VariantCatalog {
 public:
  // ValidateName explains what is wrong with a new variant name (INVALID_ARGUMENT).
  static absl::Status ValidateName(const std::string& name);
  // ValidateReference also accepts the names of kept versions, "NAME@N".
  static absl::Status ValidateReference(const std::string& name);
  // VersionName: "NAME@N".
  static std::string VersionName(const std::string& name, int64_t version);

  // Register adds a variant; ALREADY_EXISTS when the name is taken.
  absl::Status Register(std::shared_ptr<const Variant> variant);
  // Remove takes a variant out (NOT_FOUND when absent) and returns it.
  absl::StatusOr<std::shared_ptr<const Variant>> Remove(const std::string& name);
  // Replace makes `current` what its name resolves to, in one step for every reader, and
  // registers `previous` (may be null) under its own name. NOT_FOUND when current's name is not
  // registered, ALREADY_EXISTS when previous's is; nothing changes then.
  absl::Status Replace(std::shared_ptr<const Variant> current, std::shared_ptr<const Variant> previous);
  std::shared_ptr<const Variant> Find(const std::string& name) const;
  // List returns up to `limit` variants whose names start with `prefix` and sort after
  // `after`, in name order.
  std::vector<std::shared_ptr<const Variant>> List(const std::string& prefix,
                                                   const std::string& after, size_t limit) const;

 private:
  mutable absl::Mutex mutex_;
  std::map<std::string, std::shared_ptr<const Variant>> variants_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace deltaserve::control
