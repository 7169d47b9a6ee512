#include "server/control/variant_registry.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/common/file_util.h"
#include "server/common/log.h"
#include "server/common/path_safety.h"
#include "server/common/sha256.h"
#include "server/common/status_macros.h"
#include "server/deltas/peft_adapter.h"

namespace deltaserve::control {
namespace {

constexpr const char* kAdapterConfig = "adapter_config.json";

absl::Status WithName(const std::string& name, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("adapter \"", name, "\": ", status.message()));
}

// AdapterDirectories finds the adapters under `directory`: DIR/NAME and DIR/NAMESPACE/NAME,
// directories holding adapter_config.json, as (name, path) pairs in name order.
std::vector<std::pair<std::string, std::string>> AdapterDirectories(const std::string& directory) {
  std::vector<std::pair<std::string, std::string>> found;
  for (const std::string& name : common::Subdirectories(directory)) {
    const std::string path = common::JoinPath(directory, name);
    if (common::PathExists(common::JoinPath(path, kAdapterConfig))) {
      found.push_back({name, path});
      continue;
    }
    for (const std::string& inner : common::Subdirectories(path)) {
      const std::string inner_path = common::JoinPath(path, inner);
      if (common::PathExists(common::JoinPath(inner_path, kAdapterConfig))) {
        found.push_back({name + "/" + inner, inner_path});
      }
    }
  }
  return found;
}

// LineageOf reads what a catalog row knows beyond the files.
VariantLineage LineageOf(const VariantRecord& row) {
  return VariantLineage{row.kind, row.parents, row.recipe_json, row.job_id, row.evaluation_json};
}

// MakeVariant: the catalog entry of an adapter read from `path` (its adapter id is set once the
// engine holds it).
std::shared_ptr<Variant> MakeVariant(const std::string& name, const std::string& path, bool owned,
                                     const deltas::DeltaSet& host, const std::string& base_model,
                                     const VariantLineage& lineage, absl::Time created, int64_t version) {
  auto variant = std::make_shared<Variant>();
  variant->name = name;
  variant->path = path;
  variant->owned = owned;
  variant->bytes = host.Bytes();
  variant->ranks = host.Ranks();
  variant->base_model = base_model;
  variant->created = created;
  variant->lineage = lineage;
  variant->version = version;
  return variant;
}

// PlaceFiles moves a staged adapter directory to `final_path` (ALREADY_EXISTS when taken) and
// makes the move durable; if that fails the moved files are removed again.
absl::Status PlaceFiles(const std::string& staged, const std::string& final_path) {
  const std::string parent = final_path.substr(0, final_path.rfind('/'));
  RETURN_IF_ERROR(common::MakeDirectories(parent));
  RETURN_IF_ERROR(common::RenameDirectory(staged, final_path));
  absl::Status synced = common::SyncPath(parent);
  if (!synced.ok()) common::RemoveRecursively(final_path).IgnoreError();
  return synced;
}

// RecordOf: the catalog row of a variant whose files are in place.
absl::StatusOr<VariantRecord> RecordOf(const Variant& variant, const deltas::DeltaSet& deltas) {
  VariantRecord record;
  record.name = variant.name;
  record.owner_namespace = NamespaceOf(variant.name);
  record.kind = variant.lineage.kind;
  record.parents = variant.lineage.parents;
  record.recipe_json = variant.lineage.recipe_json;
  record.job_id = variant.lineage.job_id;
  record.evaluation_json = variant.lineage.evaluation_json;
  record.artifact_path = variant.path;
  for (const char* file : {kAdapterConfig, "adapter_model.safetensors"}) {
    absl::StatusOr<std::string> digest = common::Sha256OfFile(common::JoinPath(variant.path, file));
    if (!digest.ok()) return WithName(variant.name, digest.status());
    record.artifact_sha256[file] = *digest;
  }
  record.size_bytes = variant.bytes;
  record.rank_summary = deltas.RankSummary();
  record.created_unix_nanos = absl::ToUnixNanos(variant.created);
  record.version = variant.version;
  return record;
}

}  // namespace

absl::StatusOr<std::unique_ptr<VariantRegistry>> VariantRegistry::Create(
    VariantRegistryOptions options, engine::Engine* engine) {
  std::unique_ptr<VariantRegistry> registry(new VariantRegistry(std::move(options), engine));
  // Uploads that never finished (a crash mid-upload) are abandoned.
  RETURN_IF_ERROR(common::RemoveRecursively(registry->TempDir()));
  RETURN_IF_ERROR(common::MakeDirectories(registry->TempDir()));
  RETURN_IF_ERROR(common::MakeDirectories(registry->AdaptersDir()));
  ASSIGN_OR_RETURN(registry->store_,
                   CatalogStore::Open(common::JoinPath(registry->options_.data_dir, "catalog.db")));
  RETURN_IF_ERROR(registry->Restore());
  return registry;
}

bool VariantRegistry::IsOwned(const std::string& path) const {
  const std::string prefix = AdaptersDir() + "/";
  return path.compare(0, prefix.size(), prefix) == 0;
}

absl::Status VariantRegistry::Restore() {
  ASSIGN_OR_RETURN(std::vector<VariantRecord> rows, store_->ListVariants());
  int ready = 0, broken = 0;
  for (const VariantRecord& row : rows) {
    const bool owned = IsOwned(row.artifact_path);
    if (row.state == "DELETING") {  // a delete cut off by a crash: finish it
      if (owned) RETURN_IF_ERROR(common::RemoveRecursively(row.artifact_path));
      RETURN_IF_ERROR(store_->DeleteVariant(row.name));
      continue;
    }
    absl::StatusOr<VariantStatus> registered = [&]() -> absl::StatusOr<VariantStatus> {
      ASSIGN_OR_RETURN(deltas::PeftAdapter adapter, ReadAdapterAt(row.name, row.artifact_path));
      if (catalog_.Find(row.name) != nullptr) {
        return absl::AlreadyExistsError(absl::StrCat("variant \"", row.name, "\" already exists"));
      }
      return Register(row.name, row.artifact_path, owned, /*persist=*/false, std::move(adapter), LineageOf(row),
                      absl::FromUnixNanos(row.created_unix_nanos), row.version);
    }();
    if (registered.ok()) {
      ++ready;
      continue;
    }
    auto variant = std::make_shared<Variant>();
    variant->name = row.name;
    variant->path = row.artifact_path;
    variant->owned = owned;
    variant->bytes = row.size_bytes;
    variant->created = absl::FromUnixNanos(row.created_unix_nanos);
    variant->lineage = LineageOf(row);
    variant->version = row.version;
    variant->state = "BROKEN";
    variant->broken_reason = std::string(registered.status().message());
    RETURN_IF_ERROR(catalog_.Register(variant));
    RETURN_IF_ERROR(store_->SetVariantState(row.name, "BROKEN"));
    common::Log(absl::StrCat("variant \"", row.name, "\" is BROKEN: ", variant->broken_reason));
    ++broken;
  }
  // Uploaded directories without a row never finished registering (or publishing).
  std::set<std::string> known_paths;
  for (const VariantRecord& row : rows) known_paths.insert(row.artifact_path);
  for (const auto& [name, directory] : AdapterDirectories(AdaptersDir())) {
    if (known_paths.count(directory) > 0) continue;
    common::Log(absl::StrCat("removing ", directory, ": an upload that never reached the catalog"));
    RETURN_IF_ERROR(common::RemoveRecursively(directory));
  }
  if (ready + broken > 0) {
    common::Log(absl::StrCat("catalog: ", ready, " variants restored, ", broken, " broken"));
  }
  return absl::OkStatus();
}

std::string VariantRegistry::AdaptersDir() const { return common::JoinPath(options_.data_dir, "adapters"); }
std::string VariantRegistry::TempDir() const { return common::JoinPath(options_.data_dir, "tmp"); }

VariantStatus VariantRegistry::StatusOf(std::shared_ptr<const Variant> variant) const {
  VariantStatus status;
  absl::StatusOr<engine::AdapterInfo> info = engine_->adapters().Info(variant->adapter_id);
  if (info.ok()) status.residency = *info;
  status.variant = std::move(variant);
  return status;
}

absl::StatusOr<std::shared_ptr<const Variant>> VariantRegistry::FindOrNotFound(
    const std::string& name) const {
  RETURN_IF_ERROR(VariantCatalog::ValidateReference(name));
  std::shared_ptr<const Variant> variant = catalog_.Find(name);
  if (variant == nullptr) {
    return absl::NotFoundError(absl::StrCat("variant \"", name, "\" does not exist"));
  }
  return variant;
}

absl::StatusOr<deltas::PeftAdapter> VariantRegistry::ReadNewAdapter(const std::string& name,
                                                                     const std::string& path) const {
  RETURN_IF_ERROR(VariantCatalog::ValidateName(name));
  if (catalog_.Find(name) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", name, "\" already exists"));
  }
  return ReadAdapterAt(name, path);
}

absl::StatusOr<deltas::PeftAdapter> VariantRegistry::ReadAdapterAt(const std::string& name,
                                                                   const std::string& path) const {
  const model::LlamaModel& model = engine_->model();
  absl::StatusOr<deltas::PeftAdapter> adapter =
      deltas::ReadPeftAdapter(path, model.config(), model.dtype(), at::kCPU);
  if (!adapter.ok()) return WithName(name, adapter.status());
  return adapter;
}

absl::StatusOr<VariantStatus> VariantRegistry::Register(const std::string& name, const std::string& path,
                                                        bool owned, bool persist, deltas::PeftAdapter adapter,
                                                        const VariantLineage& lineage, absl::Time created,
                                                        int64_t version) {
  auto host = std::make_shared<const deltas::DeltaSet>(std::move(adapter.deltas));
  std::shared_ptr<Variant> variant =
      MakeVariant(name, path, owned, *host, adapter.config.base_model_name_or_path, lineage, created, version);
  VariantRecord record;
  if (persist) {
    absl::StatusOr<VariantRecord> made = RecordOf(*variant, *host);
    if (!made.ok()) return made.status();
    record = std::move(*made);
  }
  absl::StatusOr<uint64_t> id = engine_->adapters().Add(path, std::move(host));
  if (!id.ok()) return WithName(name, id.status());
  variant->adapter_id = *id;
  absl::Status registered = catalog_.Register(variant);
  if (!registered.ok()) {
    engine_->adapters().Remove(*id).IgnoreError();
    return registered;
  }
  if (persist) {
    absl::Status stored = store_->InsertVariant(record);
    if (!stored.ok()) {
      catalog_.Remove(name).IgnoreError();
      engine_->adapters().Remove(*id).IgnoreError();
      return stored;
    }
    if (VariantObserver* observer = observer_.load()) observer->OnPublished(*variant);
  }
  return StatusOf(std::move(variant));
}

absl::StatusOr<int> VariantRegistry::RegisterDirectory(const std::string& directory) {
  if (!common::IsDirectory(directory)) {
    return absl::NotFoundError(absl::StrCat(directory, " is not a directory"));
  }
  const std::vector<std::pair<std::string, std::string>> found = AdapterDirectories(directory);
  for (const auto& [name, path] : found) {
    ASSIGN_OR_RETURN(deltas::PeftAdapter adapter, ReadNewAdapter(name, path));
    RETURN_IF_ERROR(
        Register(name, path, /*owned=*/false, /*persist=*/false, std::move(adapter), {}, clock().Now()).status());
  }
  return static_cast<int>(found.size());
}

absl::StatusOr<VariantStatus> VariantRegistry::RegisterAdapter(const std::string& name,
                                                               const std::string& path) {
  RETURN_IF_ERROR(VariantCatalog::ValidateName(name));
  if (options_.adapter_roots.empty()) {
    return absl::FailedPreconditionError(
        "the server has no --adapter-root, so it registers no server-side paths; upload the "
        "adapter with UploadAdapter instead");
  }
  if (path.empty()) return absl::InvalidArgumentError("path is empty");
  ASSIGN_OR_RETURN(std::string real, common::ResolveUnderRoots(path, options_.adapter_roots));
  if (!common::IsDirectory(real)) {
    return absl::InvalidArgumentError(absl::StrCat("path \"", path, "\" is not a directory"));
  }
  ASSIGN_OR_RETURN(deltas::PeftAdapter adapter, ReadNewAdapter(name, real));
  return Register(name, real, /*owned=*/false, /*persist=*/true, std::move(adapter), {}, clock().Now());
}

absl::StatusOr<std::unique_ptr<AdapterUpload>> VariantRegistry::BeginUpload(const std::string& name) {
  RETURN_IF_ERROR(VariantCatalog::ValidateName(name));
  if (catalog_.Find(name) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", name, "\" already exists"));
  }
  return AdapterUpload::Begin(TempDir(), name, options_.upload_limits);
}

absl::StatusOr<VariantStatus> VariantRegistry::CommitUpload(std::unique_ptr<AdapterUpload> upload) {
  RETURN_IF_ERROR(upload->Finish());
  const std::string& name = upload->name();
  // Read and validate where it was staged: nothing invalid ever reaches adapters/. The same
  // deltas are registered after the move (no second read).
  ASSIGN_OR_RETURN(deltas::PeftAdapter adapter, ReadNewAdapter(name, upload->directory()));
  ASSIGN_OR_RETURN(VariantStatus status, Adopt(name, upload->directory(), std::move(adapter), {}));
  upload->Release();
  return status;
}

absl::StatusOr<std::string> VariantRegistry::MakeStagingDirectory(const std::string& purpose) const {
  return common::MakeTempDirectory(TempDir(), purpose);
}

absl::StatusOr<VariantStatus> VariantRegistry::Publish(const std::string& name, const std::string& staged,
                                                       const VariantLineage& lineage, int64_t version) {
  ASSIGN_OR_RETURN(deltas::PeftAdapter adapter, ReadNewAdapter(name, staged));
  return Adopt(name, staged, std::move(adapter), lineage, version);
}

absl::StatusOr<VariantStatus> VariantRegistry::Adopt(const std::string& name, const std::string& staged,
                                                     deltas::PeftAdapter adapter, const VariantLineage& lineage,
                                                     int64_t version) {
  const std::string final_path = common::JoinPath(AdaptersDir(), name);
  absl::Status placed = PlaceFiles(staged, final_path);
  if (absl::IsAlreadyExists(placed)) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", name, "\" already exists"));
  }
  RETURN_IF_ERROR(placed);
  // From here the files are ours: a failure removes them (and a crash leaves a directory
  // without a row, which the next start-up removes).
  absl::StatusOr<VariantStatus> registered =
      Register(name, final_path, /*owned=*/true, /*persist=*/true, std::move(adapter), lineage, clock().Now(), version);
  if (!registered.ok()) common::RemoveRecursively(final_path).IgnoreError();
  return registered;
}

absl::StatusOr<VariantStatus> VariantRegistry::PublishReplacement(const std::string& name, const std::string& staged,
                                                                  const VariantLineage& lineage,
                                                                  int64_t expected_version, bool keep_previous,
                                                                  absl::Time drain_deadline) {
  ASSIGN_OR_RETURN(std::shared_ptr<const Variant> old, FindOrNotFound(name));
  if (old->version != expected_version) {
    return absl::AbortedError(absl::StrCat("variant \"", name, "\" became version ", old->version,
                                           " while the job worked from version ", expected_version,
                                           "; nothing was replaced"));
  }
  RETURN_IF_ERROR(CheckServable(*old));
  if (!store_->GetVariant(name).ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "variant \"", name, "\" comes from --adapter-dir and has no catalog row, so it cannot be replaced"));
  }
  const std::string previous_name = VariantCatalog::VersionName(name, old->version);
  if (keep_previous && catalog_.Find(previous_name) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", previous_name, "\" already exists"));
  }
  ASSIGN_OR_RETURN(deltas::PeftAdapter adapter, ReadAdapterAt(name, staged));

  // The new version's files go to adapters/NAME@VERSION (a name no upload can take).
  const std::string final_path = common::JoinPath(AdaptersDir(), VariantCatalog::VersionName(name, old->version + 1));
  RETURN_IF_ERROR(PlaceFiles(staged, final_path));
  auto host = std::make_shared<const deltas::DeltaSet>(std::move(adapter.deltas));
  std::shared_ptr<Variant> new_variant = MakeVariant(name, final_path, /*owned=*/true, *host,
                                                     adapter.config.base_model_name_or_path, lineage, clock().Now(),
                                                     old->version + 1);
  // Until the catalog row switches, a failure removes the new files (and a crash leaves a
  // directory without a row, which the next start-up removes).
  auto undo = [&](absl::Status status, uint64_t id) {
    if (id != 0) engine_->adapters().Remove(id).IgnoreError();
    common::RemoveRecursively(final_path).IgnoreError();
    return status;
  };
  absl::StatusOr<VariantRecord> record = RecordOf(*new_variant, *host);
  if (!record.ok()) return undo(record.status(), 0);
  absl::StatusOr<uint64_t> id = engine_->adapters().Add(final_path, host);
  if (!id.ok()) return undo(WithName(name, id.status()), 0);
  new_variant->adapter_id = *id;
  absl::Status switched = store_->ReplaceVariant(name, previous_name, keep_previous ? "READY" : "DELETING", *record);
  if (!switched.ok()) return undo(switched, *id);
  std::shared_ptr<Variant> previous;
  if (keep_previous) {
    previous = std::make_shared<Variant>(*old);
    previous->name = previous_name;
  }
  // The switch every new request sees at once; running ones hold the old adapter.
  absl::Status replaced = catalog_.Replace(new_variant, previous);
  if (!replaced.ok()) {  // a concurrent delete of the name; its row was switched: finish at restart
    common::Log(absl::StrCat("replacing variant \"", name, "\": ", replaced.message()));
    return replaced;
  }
  if (VariantObserver* observer = observer_.load()) observer->OnPublished(*new_variant);
  if (!keep_previous) {
    // Retire the old version once the requests that run on it finish.
    if (!RemoveAdapterWhenUnused(old->adapter_id, drain_deadline)) {
      common::Log(absl::StrCat("variant \"", previous_name,
                               "\" is still in use at the deadline; its files go at the next start-up"));
      return StatusOf(std::move(new_variant));
    }
    DeleteFilesOf(*old, previous_name);
    absl::Status forgot = store_->DeleteVariant(previous_name);
    if (!forgot.ok()) common::Log(absl::StrCat("retired variant \"", previous_name, "\": ", forgot.message()));
  }
  return StatusOf(std::move(new_variant));
}

absl::StatusOr<VariantStatus> VariantRegistry::Get(const std::string& name) const {
  ASSIGN_OR_RETURN(std::shared_ptr<const Variant> variant, FindOrNotFound(name));
  return StatusOf(std::move(variant));
}

std::vector<VariantStatus> VariantRegistry::List(const std::string& prefix, const std::string& after,
                                                 size_t limit) const {
  std::vector<VariantStatus> page;
  for (auto& variant : catalog_.List(prefix, after, limit)) page.push_back(StatusOf(std::move(variant)));
  return page;
}

absl::Status VariantRegistry::Delete(const std::string& name, bool drain, absl::Time deadline) {
  ASSIGN_OR_RETURN(std::shared_ptr<const Variant> variant, FindOrNotFound(name));
  // Variants from --adapter-dir have no row; NOT_FOUND from the store is expected for them.
  auto forget_row = [&]() -> absl::Status {
    absl::Status deleted = store_->DeleteVariant(name);
    return absl::IsNotFound(deleted) ? absl::OkStatus() : deleted;
  };
  auto set_row_state = [&](const char* state) -> absl::Status {
    absl::Status set = store_->SetVariantState(name, state);
    return absl::IsNotFound(set) ? absl::OkStatus() : set;
  };
  if (variant->adapter_id == 0) {  // BROKEN: nothing loaded
    RETURN_IF_ERROR(catalog_.Remove(name).status());
    if (variant->owned) RETURN_IF_ERROR(common::RemoveRecursively(variant->path));
    return forget_row();
  }
  engine::AdapterCache& cache = engine_->adapters();
  auto users = [&] {
    absl::StatusOr<engine::AdapterInfo> info = cache.Info(variant->adapter_id);
    return info.ok() ? info->users : 0;
  };
  if (!drain && users() > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "variant \"", name, "\" is used by ", users(),
        " request(s); retry when they finish, or delete with drain to wait for them"));
  }
  // From here new requests get NOT_FOUND; those already accepted finish on the adapter. A crash
  // from here on finishes the delete at the next start-up.
  RETURN_IF_ERROR(set_row_state("DELETING"));
  ASSIGN_OR_RETURN(variant, catalog_.Remove(name));
  if (!RemoveAdapterWhenUnused(variant->adapter_id, drain ? deadline : absl::InfinitePast())) {
    RETURN_IF_ERROR(catalog_.Register(variant));  // back as it was
    RETURN_IF_ERROR(set_row_state("READY"));
    return drain ? absl::DeadlineExceededError(absl::StrCat(
                       "variant \"", name, "\" is still used by ", users(),
                       " request(s) at the deadline; it was not deleted"))
                 : absl::FailedPreconditionError(absl::StrCat(
                       "variant \"", name, "\" is used by ", users(),
                       " request(s); retry when they finish, or delete with drain"));
  }
  DeleteFilesOf(*variant, name);
  RETURN_IF_ERROR(forget_row());
  if (VariantObserver* observer = observer_.load()) observer->OnDeleted(name);
  return absl::OkStatus();
}

bool VariantRegistry::RemoveAdapterWhenUnused(uint64_t adapter_id, absl::Time deadline) {
  absl::Status removed = engine_->adapters().RemoveWhenUnused(adapter_id, deadline);
  return removed.ok() || absl::IsNotFound(removed);
}

void VariantRegistry::DeleteFilesOf(const Variant& variant, const std::string& name) const {
  if (!variant.owned) return;
  absl::Status files = common::RemoveRecursively(variant.path);
  if (!files.ok()) common::Log(absl::StrCat("removed variant \"", name, "\" left files: ", files.message()));
}

absl::StatusOr<VariantStatus> VariantRegistry::Pin(const std::string& name) {
  ASSIGN_OR_RETURN(std::shared_ptr<const Variant> variant, FindOrNotFound(name));
  RETURN_IF_ERROR(CheckServable(*variant));
  absl::Status pinned = engine_->adapters().Pin(variant->adapter_id);
  if (!pinned.ok()) return WithName(name, pinned);
  return StatusOf(std::move(variant));
}

absl::StatusOr<VariantStatus> VariantRegistry::Unpin(const std::string& name) {
  ASSIGN_OR_RETURN(std::shared_ptr<const Variant> variant, FindOrNotFound(name));
  RETURN_IF_ERROR(engine_->adapters().Unpin(variant->adapter_id));
  return StatusOf(std::move(variant));
}

}  // namespace deltaserve::control
