#include "server/control/shared_variants.h"

#include <filesystem>
#include <random>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "server/common/file_util.h"
#include "server/common/log.h"
#include "server/common/sha256.h"
#include "server/common/status_macros.h"

namespace deltaserve::control {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int64_t kMaxFileBytes = int64_t{8} << 30;

// Whether this thread is importing: the registry's OnPublished for an import is not a new
// publication.
thread_local bool importing = false;

std::string NewUid() {
  std::random_device device;
  std::mt19937_64 random((static_cast<uint64_t>(device()) << 32) ^ device());
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(random()));
  return text;
}

absl::StatusOr<Json> ReadManifest(const std::string& version_dir) {
  ASSIGN_OR_RETURN(std::string text, common::ReadFileToString(common::JoinPath(version_dir, "manifest.json"), 1 << 20));
  Json manifest = Json::parse(text, nullptr, false);
  if (!manifest.is_object() || !manifest.contains("files") || !manifest["files"].is_object() ||
      !manifest.contains("version") || !manifest["version"].is_number_integer()) {
    return absl::DataLossError(absl::StrCat(version_dir, "/manifest.json is not a deltaserve manifest"));
  }
  return manifest;
}

Json LineageJson(const VariantLineage& lineage) {
  return {{"kind", lineage.kind},
          {"parents", lineage.parents},
          {"recipe_json", lineage.recipe_json},
          {"job_id", lineage.job_id},
          {"evaluation_json", lineage.evaluation_json}};
}

VariantLineage LineageFrom(const Json& json) {
  VariantLineage lineage;
  if (!json.is_object()) return lineage;
  lineage.kind = json.value("kind", lineage.kind);
  if (json.contains("parents") && json["parents"].is_array()) {
    for (const Json& parent : json["parents"]) {
      if (parent.is_string()) lineage.parents.push_back(parent.get<std::string>());
    }
  }
  lineage.recipe_json = json.value("recipe_json", lineage.recipe_json);
  lineage.job_id = json.value("job_id", lineage.job_id);
  lineage.evaluation_json = json.value("evaluation_json", lineage.evaluation_json);
  return lineage;
}

// A file name a manifest may list: plain, no directories.
bool PlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos && name != "manifest.json";
}

}  // namespace

absl::StatusOr<std::unique_ptr<SharedVariants>> SharedVariants::Start(SharedVariantsOptions options,
                                                                      VariantRegistry* registry) {
  for (const char* sub : {"variants", "tmp"}) {
    absl::Status made = common::MakeDirectories(common::JoinPath(options.shared_dir, sub));
    if (!made.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--shared-dir ", options.shared_dir, " is not a usable directory: ", made.message()));
    }
  }
  std::unique_ptr<SharedVariants> shared(new SharedVariants(std::move(options), registry));
  registry->SetObserver(shared.get());
  shared->SyncOnce();
  SharedVariants* self = shared.get();
  shared->watcher_ = std::thread([self] {
    common::Clock& clock = self->registry_->clock();
    while (true) {
      {
        absl::MutexLock lock(&self->stop_mutex_);
        if (clock.AwaitWithDeadline(&self->stop_mutex_, absl::Condition(&self->stopping_),
                                    clock.Now() + self->options_.poll)) {
          return;
        }
      }
      self->SyncOnce();
    }
  });
  return shared;
}

SharedVariants::~SharedVariants() {
  {
    absl::MutexLock lock(&stop_mutex_);
    stopping_ = true;
  }
  if (watcher_.joinable()) watcher_.join();
  registry_->SetObserver(nullptr);
}

std::string SharedVariants::NameDir(const std::string& name) const {
  return common::JoinPath(common::JoinPath(options_.shared_dir, "variants"), absl::StrReplaceAll(name, {{"/", "+"}}));
}

std::string SharedVariants::Latest(const std::string& name) const {
  std::string best;
  int64_t best_version = 0;
  for (const std::string& entry : common::Subdirectories(NameDir(name))) {
    const char* text = entry.c_str();
    char* end = nullptr;
    const long long version = std::strtoll(text, &end, 10);
    if (end == text || *end != '\0' || version <= best_version) continue;
    best_version = version;
    best = common::JoinPath(NameDir(name), entry);
  }
  return best;
}

void SharedVariants::OnPublished(const Variant& variant) {
  if (importing) return;
  absl::MutexLock lock(&mutex_);
  absl::Status published = PublishLocked(variant);
  if (!published.ok()) {
    common::Log(absl::StrCat("shared dir: variant \"", variant.name, "\" stays on this replica for now: ",
                             published.message()));
  }
}

absl::Status SharedVariants::PublishLocked(const Variant& variant) {
  const std::string uid = NewUid();
  ASSIGN_OR_RETURN(std::string staged, common::MakeTempDirectory(common::JoinPath(options_.shared_dir, "tmp"), uid));
  auto fail = [&](absl::Status status) {
    common::RemoveRecursively(staged).IgnoreError();
    return status;
  };
  Json files = Json::object();
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(variant.path, error)) {
    const std::string file = entry.path().filename().string();
    if (!entry.is_regular_file() || !PlainFileName(file)) continue;
    absl::StatusOr<std::string> bytes = common::ReadFileToString(entry.path().string(), kMaxFileBytes);
    if (!bytes.ok()) return fail(bytes.status());
    common::Sha256 hash;
    hash.Update(*bytes);
    files[file] = hash.HexDigest();
    absl::Status written = common::WriteFileAtomically(common::JoinPath(staged, file), *bytes);
    if (!written.ok()) return fail(written);
  }
  if (error) return fail(absl::UnavailableError(absl::StrCat("cannot list ", variant.path, ": ", error.message())));
  const Json manifest = {{"name", variant.name},
                         {"version", variant.version},
                         {"uid", uid},
                         {"origin", options_.replica},
                         {"created", absl::ToUnixSeconds(variant.created)},
                         {"lineage", LineageJson(variant.lineage)},
                         {"files", files}};
  absl::Status written = common::WriteFileAtomically(common::JoinPath(staged, "manifest.json"), manifest.dump(2));
  if (!written.ok()) return fail(written);
  if (absl::Status synced = common::SyncPath(staged); !synced.ok()) return fail(synced);
  if (absl::Status made = common::MakeDirectories(NameDir(variant.name)); !made.ok()) return fail(made);
  const std::string target = common::JoinPath(NameDir(variant.name), std::to_string(variant.version));
  absl::Status renamed = common::RenameDirectory(staged, target);
  if (!renamed.ok()) {
    // Taken: another replica published this name and version first.
    if (common::PathExists(target)) {
      fail(absl::OkStatus()).IgnoreError();  // only the staged copy's removal
      return absl::AlreadyExistsError(absl::StrCat("another replica published version ", variant.version, " first"));
    }
    return fail(renamed);
  }
  synced_[variant.name] = uid;
  // Older versions are superseded.
  for (const std::string& entry : common::Subdirectories(NameDir(variant.name))) {
    if (entry != std::to_string(variant.version)) {
      common::RemoveRecursively(common::JoinPath(NameDir(variant.name), entry)).IgnoreError();
    }
  }
  return absl::OkStatus();
}

void SharedVariants::OnDeleted(const std::string& name) {
  if (importing) return;
  absl::MutexLock lock(&mutex_);
  synced_.erase(name);
  const std::string directory = NameDir(name);
  if (!common::PathExists(directory)) return;
  // Out of sight in one rename, then removed.
  const std::string doomed = common::JoinPath(common::JoinPath(options_.shared_dir, "tmp"), "deleted-" + NewUid());
  absl::Status moved = common::RenameDirectory(directory, doomed);
  if (!moved.ok()) {
    common::Log(absl::StrCat("shared dir: cannot withdraw deleted variant \"", name, "\": ", moved.message()));
    return;
  }
  common::RemoveRecursively(doomed).IgnoreError();
}

absl::Status SharedVariants::ImportLocked(const std::string& name, const std::string& version_dir) {
  ASSIGN_OR_RETURN(Json manifest, ReadManifest(version_dir));
  const std::string uid = manifest.value("uid", "");
  const int64_t version = manifest["version"].get<int64_t>();
  if (manifest.value("name", "") != name) {
    return absl::FailedPreconditionError(absl::StrCat("the shared manifest of \"", name, "\" names \"",
                                                      manifest.value("name", ""), "\"; refusing it"));
  }
  std::shared_ptr<const Variant> local = registry_->Find(name);
  if (local != nullptr && local->version >= version) {
    synced_.emplace(name, uid);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::string staged, registry_->MakeStagingDirectory("shared"));
  auto fail = [&](absl::Status status) {
    common::RemoveRecursively(staged).IgnoreError();
    return status;
  };
  for (auto it = manifest["files"].begin(); it != manifest["files"].end(); ++it) {
    const std::string file = it.key();
    if (!PlainFileName(file) || !it.value().is_string()) {
      return fail(absl::FailedPreconditionError(absl::StrCat("the shared manifest of \"", name, "\" lists \"", file,
                                                             "\", which is not a plain file name; refusing it")));
    }
    absl::StatusOr<std::string> bytes = common::ReadFileToString(common::JoinPath(version_dir, file), kMaxFileBytes);
    if (!bytes.ok()) return fail(bytes.status());
    // The copy is what gets served: hash what was read, not the shared file again.
    common::Sha256 hash;
    hash.Update(*bytes);
    const std::string digest = hash.HexDigest();
    if (digest != it.value().get<std::string>()) {
      return fail(absl::FailedPreconditionError(absl::StrCat(
          "variant \"", name, "\" (version ", version, ", published by ", manifest.value("origin", "?"), "): ", file,
          " has SHA-256 ", digest, ", not the manifest's ", it.value().get<std::string>(),
          "; the shared copy is corrupt, so it is not served. Publish it again (re-upload or re-run its job)")));
    }
    absl::Status written = common::WriteFileAtomically(common::JoinPath(staged, file), *bytes);
    if (!written.ok()) return fail(written);
  }
  const VariantLineage lineage = LineageFrom(manifest.contains("lineage") ? manifest["lineage"] : Json());
  importing = true;
  absl::StatusOr<VariantStatus> imported =
      local == nullptr ? registry_->Publish(name, staged, lineage, version)
                       : registry_->PublishReplacement(name, staged, lineage, local->version, /*keep_previous=*/false,
                                                       registry_->clock().Now() + absl::Seconds(30));
  importing = false;
  if (!imported.ok()) return fail(imported.status());
  synced_[name] = uid;
  common::Log(absl::StrCat("shared dir: imported variant \"", name, "\" version ", version, " from ",
                           manifest.value("origin", "?")));
  return absl::OkStatus();
}

absl::Status SharedVariants::Fetch(const std::string& name) {
  absl::MutexLock lock(&mutex_);
  const std::string latest = Latest(name);
  if (latest.empty()) return absl::NotFoundError(absl::StrCat("variant \"", name, "\" is not published"));
  return ImportLocked(name, latest);
}

void SharedVariants::SyncOnce() {
  absl::MutexLock lock(&mutex_);
  // (1) Import what is new or newer.
  std::set<std::string> published;
  for (const std::string& entry : common::Subdirectories(common::JoinPath(options_.shared_dir, "variants"))) {
    const std::string name = absl::StrReplaceAll(entry, {{"+", "/"}});
    const std::string latest = Latest(name);
    if (latest.empty()) continue;
    published.insert(name);
    absl::StatusOr<Json> manifest = ReadManifest(latest);
    const std::string uid = manifest.ok() ? manifest->value("uid", "") : latest;
    if (refused_.count(uid) > 0) continue;
    std::shared_ptr<const Variant> local = registry_->Find(name);
    if (local != nullptr && manifest.ok() && local->version >= (*manifest)["version"].get<int64_t>()) {
      synced_.emplace(name, uid);
      continue;
    }
    absl::Status imported = ImportLocked(name, latest);
    if (!imported.ok()) {
      refused_.insert(uid);
      common::Log(absl::StrCat("shared dir: not importing variant \"", name, "\": ", imported.message()));
    }
  }
  // (2) Delete what another replica deleted.
  for (auto it = synced_.begin(); it != synced_.end();) {
    if (published.count(it->first) > 0) {
      ++it;
      continue;
    }
    importing = true;  // the deletion is not news to the directory
    absl::Status deleted = registry_->Delete(it->first, /*drain=*/false, absl::InfinitePast());
    importing = false;
    if (deleted.ok() || absl::IsNotFound(deleted)) {
      if (deleted.ok()) common::Log(absl::StrCat("shared dir: variant \"", it->first, "\" was deleted on another replica"));
      it = synced_.erase(it);
    } else {
      ++it;  // in use: next time
    }
  }
  // (3) Publish persisted local variants the directory lacks.
  for (const VariantStatus& status : registry_->List("", "", 100000)) {
    const Variant& variant = *status.variant;
    if (synced_.count(variant.name) > 0 || published.count(variant.name) > 0 || variant.state != "READY" ||
        variant.name.find('@') != std::string::npos || !registry_->Persisted(variant.name)) {
      continue;
    }
    absl::Status done = PublishLocked(variant);
    if (!done.ok() && !absl::IsAlreadyExists(done)) {
      common::Log(absl::StrCat("shared dir: cannot publish variant \"", variant.name, "\": ", done.message()));
    }
  }
}

}  // namespace deltaserve::control
