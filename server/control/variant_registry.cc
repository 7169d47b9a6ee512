#include "server/control/variant_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/common/file_util.h"
#include "server/common/log.h"
#include "server/common/path_safety.h"
#include "server/common/status_macros.h"
#include "server/deltas/peft_adapter.h"

namespace deltaserve::control {
namespace {

constexpr const char* kAdapterConfig = "adapter_config.json";

absl::Status WithName(const std::string& name, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("adapter \"", name, "\": ", status.message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<VariantRegistry>> VariantRegistry::Create(
    VariantRegistryOptions options, engine::Engine* engine) {
  std::unique_ptr<VariantRegistry> registry(new VariantRegistry(std::move(options), engine));
  // Uploads that never finished (a crash mid-upload) are abandoned.
  RETURN_IF_ERROR(common::RemoveRecursively(registry->TempDir()));
  RETURN_IF_ERROR(common::MakeDirectories(registry->TempDir()));
  RETURN_IF_ERROR(common::MakeDirectories(registry->AdaptersDir()));
  ASSIGN_OR_RETURN(int restored, registry->RegisterTree(registry->AdaptersDir(), /*owned=*/true,
                                                         /*skip_invalid=*/true));
  if (restored > 0) common::Log(absl::StrCat("registered ", restored, " uploaded adapters"));
  return registry;
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
  RETURN_IF_ERROR(VariantCatalog::ValidateName(name));
  std::shared_ptr<const Variant> variant = catalog_.Find(name);
  if (variant == nullptr) {
    return absl::NotFoundError(absl::StrCat("variant \"", name, "\" does not exist"));
  }
  return variant;
}

absl::StatusOr<VariantStatus> VariantRegistry::Register(const std::string& name,
                                                        const std::string& path, bool owned) {
  RETURN_IF_ERROR(VariantCatalog::ValidateName(name));
  if (catalog_.Find(name) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", name, "\" already exists"));
  }
  const model::LlamaModel& model = engine_->model();
  absl::StatusOr<deltas::PeftAdapter> adapter =
      deltas::ReadPeftAdapter(path, model.config(), model.dtype(), at::kCPU);
  if (!adapter.ok()) return WithName(name, adapter.status());
  auto host = std::make_shared<const deltas::DeltaSet>(std::move(adapter->deltas));
  auto variant = std::make_shared<Variant>();
  variant->name = name;
  variant->path = path;
  variant->owned = owned;
  variant->bytes = host->Bytes();
  variant->ranks = host->Ranks();
  variant->created = absl::Now();
  absl::StatusOr<uint64_t> id = engine_->adapters().Add(path, std::move(host));
  if (!id.ok()) return WithName(name, id.status());
  variant->adapter_id = *id;
  absl::Status registered = catalog_.Register(variant);
  if (!registered.ok()) {
    engine_->adapters().Remove(*id).IgnoreError();
    return registered;
  }
  return StatusOf(std::move(variant));
}

absl::StatusOr<int> VariantRegistry::RegisterTree(const std::string& directory, bool owned,
                                                  bool skip_invalid) {
  if (!common::IsDirectory(directory)) {
    return absl::NotFoundError(absl::StrCat(directory, " is not a directory"));
  }
  std::vector<std::pair<std::string, std::string>> found;  // name, path
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
  int registered = 0;
  for (const auto& [name, path] : found) {
    absl::StatusOr<VariantStatus> status = Register(name, path, owned);
    if (!status.ok() && !skip_invalid) return status.status();
    if (!status.ok()) {
      common::Log(absl::StrCat("skipping ", path, ": ", status.status().message()));
      continue;
    }
    ++registered;
  }
  return registered;
}

absl::StatusOr<int> VariantRegistry::RegisterDirectory(const std::string& directory) {
  return RegisterTree(directory, /*owned=*/false, /*skip_invalid=*/false);
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
  return Register(name, real, /*owned=*/false);
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
  if (catalog_.Find(name) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", name, "\" already exists"));
  }
  // Validate where it was staged: nothing invalid ever reaches adapters/.
  const model::LlamaModel& model = engine_->model();
  absl::StatusOr<deltas::PeftAdapter> check =
      deltas::ReadPeftAdapter(upload->directory(), model.config(), model.dtype(), at::kCPU);
  if (!check.ok()) return WithName(name, check.status());

  const std::string final_path = common::JoinPath(AdaptersDir(), name);
  const std::string parent = final_path.substr(0, final_path.rfind('/'));
  RETURN_IF_ERROR(common::MakeDirectories(parent));
  absl::Status moved = common::RenameDirectory(upload->directory(), final_path);
  if (absl::IsAlreadyExists(moved)) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", name, "\" already exists"));
  }
  RETURN_IF_ERROR(moved);
  upload->Release();
  RETURN_IF_ERROR(common::SyncPath(parent));
  absl::StatusOr<VariantStatus> registered = Register(name, final_path, /*owned=*/true);
  if (!registered.ok()) common::RemoveRecursively(final_path).IgnoreError();
  return registered;
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
  // From here new requests get NOT_FOUND; those already accepted finish on the adapter.
  ASSIGN_OR_RETURN(variant, catalog_.Remove(name));
  while (true) {
    absl::Status removed = cache.Remove(variant->adapter_id);
    if (removed.ok() || absl::IsNotFound(removed)) break;
    if (!drain || absl::Now() >= deadline) {
      RETURN_IF_ERROR(catalog_.Register(variant));  // back as it was
      return drain ? absl::DeadlineExceededError(absl::StrCat(
                         "variant \"", name, "\" is still used by ", users(),
                         " request(s) at the deadline; it was not deleted"))
                   : absl::FailedPreconditionError(absl::StrCat(
                         "variant \"", name, "\" is used by ", users(),
                         " request(s); retry when they finish, or delete with drain"));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (variant->owned) {
    absl::Status files = common::RemoveRecursively(variant->path);
    if (!files.ok()) common::Log(absl::StrCat("deleted variant \"", name, "\" left files: ", files.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<VariantStatus> VariantRegistry::Pin(const std::string& name) {
  ASSIGN_OR_RETURN(std::shared_ptr<const Variant> variant, FindOrNotFound(name));
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
