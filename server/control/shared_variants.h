// SharedVariants: variants shared between replicas through one directory they all mount
// (--shared-dir: a ReadWriteMany volume), so that a variant made on any replica (upload,
// registration, merge, fine-tune, unlearn, edit, a new version) becomes servable on all.
// Each replica keeps its own data dir (catalog, jobs, its copy of every adapter); the shared
// directory holds only published artifacts:
//   SHARED/variants/NAME/VERSION/   (NAME with '/' as '+') the adapter's files and manifest.json:
//                                   {name, version, uid, origin, created, lineage, files: {file: sha256}}
//   SHARED/tmp/                     staging; a version directory appears by one rename, complete.
// A replica publishes what its registry publishes (VariantObserver) and removes NAME on delete.
// A watcher thread polls every `poll` (of the registry's clock) and (1) imports variants it lacks or has at a lower
// version: copies the files into its own staging directory, checks each copy's SHA-256 against
// the manifest, and only then publishes it locally; a mismatch refuses the variant (logged once
// per artifact) and leaves nothing behind; (2) deletes variants it had synced whose directory
// is gone; (3) publishes its own persisted variants the directory lacks (a publication that
// failed, or variants from before --shared-dir). Fetch imports one name at once, for a request
// naming a variant this replica has not seen yet. Errors of a publication are logged: the
// variant stays servable here, and the watcher retries.
// Two replicas creating the same NAME at the same version: the first rename wins; the other
// keeps its own locally (logged). Thread-safe; the registry must outlive it.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/control/variant_registry.h"

namespace deltaserve::control {

struct SharedVariantsOptions {
  std::string shared_dir;
  absl::Duration poll = absl::Seconds(2);
  std::string replica;  // who publishes (recorded as "origin")
};

class SharedVariants : public VariantObserver {
 public:
  // Start prepares the directory, registers itself as the registry's observer, runs one sync and
  // starts the watcher.
  static absl::StatusOr<std::unique_ptr<SharedVariants>> Start(SharedVariantsOptions options, VariantRegistry* registry);
  ~SharedVariants() override;

  void OnPublished(const Variant& variant) override;
  void OnDeleted(const std::string& name) override;

  // Fetch imports `name` now: NOT_FOUND when it is not published, FAILED_PRECONDITION when its
  // files fail their content hashes.
  absl::Status Fetch(const std::string& name);
  // SyncOnce is one pass of the watcher.
  void SyncOnce();

 private:
  SharedVariants(SharedVariantsOptions options, VariantRegistry* registry)
      : options_(std::move(options)), registry_(registry) {}

  std::string NameDir(const std::string& name) const;
  // Latest: the highest published version directory of `name` ("" when none).
  std::string Latest(const std::string& name) const;
  absl::Status PublishLocked(const Variant& variant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::Status ImportLocked(const std::string& name, const std::string& version_dir) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const SharedVariantsOptions options_;
  VariantRegistry* const registry_;
  absl::Mutex mutex_;
  std::map<std::string, std::string> synced_ ABSL_GUARDED_BY(mutex_);  // name -> uid this replica has
  std::set<std::string> refused_ ABSL_GUARDED_BY(mutex_);               // uids refused (logged once)
  absl::Mutex stop_mutex_;
  bool stopping_ ABSL_GUARDED_BY(stop_mutex_) = false;
  std::thread watcher_;
};

}  // namespace deltaserve::control
