// VariantRegistry: the operations on variants that the Variants API offers, over the catalog
// (names) and the engine's AdapterCache (deltas):
//   - RegisterAdapter reads an adapter directory on the server, which must resolve inside one
//     of the allowed roots (--adapter-root; "..", symlinks out of a root and anything outside
//     are refused);
//   - BeginUpload/CommitUpload stage an uploaded adapter in DATA_DIR/tmp, validate it against
//     the base model, and rename it into DATA_DIR/adapters/NAME;
//   - Delete refuses while requests use the variant, or with `drain` stops new requests and
//     waits for running ones until the deadline; then it frees the adapter's memory and, for
//     uploaded adapters, its files;
//   - Pin/Unpin keep an adapter on the device;
//   - MakeStagingDirectory/Publish let jobs write a new adapter in DATA_DIR/tmp and publish it
//     like an upload, with its lineage (kind, parents, recipe, job, evaluation);
//     PublishReplacement publishes it as the next version of an existing name instead.
// Registered and uploaded variants are rows in the CatalogStore (DATA_DIR/catalog.db), written
// after their files are in place, and loaded again at start-up: a variant whose files are gone
// or invalid comes back BROKEN (listed with the reason, not servable); a delete interrupted by a
// crash is completed; directories in DATA_DIR/adapters without a row (an upload cut off before
// its row) are removed. Variants from --adapter-dir are not persisted: the flag brings them.
// Validation failures are INVALID_ARGUMENT with the reason (e.g. the offending tensor).
// Thread-safe; Delete blocks until drained or the deadline, everything else reads files at
// most. The engine must outlive the registry.
//   ASSIGN_OR_RETURN(auto registry, VariantRegistry::Create(options, engine));
//   ASSIGN_OR_RETURN(VariantStatus status, registry->RegisterAdapter("acme/bot", "bot"));
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/control/adapter_upload.h"
#include "server/control/catalog_store.h"
#include "server/control/variant_catalog.h"
#include "server/deltas/peft_adapter.h"
#include "server/engine/engine.h"

namespace deltaserve::control {

struct VariantRegistryOptions {
  // Holds adapters/ (uploaded adapters) and tmp/ (uploads in progress; cleared at start-up).
  std::string data_dir;
  // Directories RegisterAdapter may read from (--adapter-root); none = RegisterAdapter is off.
  std::vector<std::string> adapter_roots;
  UploadLimits upload_limits;
};

// VariantObserver hears of variants published into the catalog (persisted: uploads, registered
// adapters, job outputs, new versions) and of deletions, after they happened; called on the
// thread that made the change, so it must not call back into the registry for the same name.
class VariantObserver {
 public:
  virtual ~VariantObserver() = default;
  virtual void OnPublished(const Variant& variant) = 0;
  virtual void OnDeleted(const std::string& name) = 0;
};

// A variant with where its adapter is now.
struct VariantStatus {
  std::shared_ptr<const Variant> variant;
  engine::AdapterInfo residency;
};

class VariantRegistry {
 public:
  // Create prepares the data dir, opens the catalog and restores its variants.
  static absl::StatusOr<std::unique_ptr<VariantRegistry>> Create(VariantRegistryOptions options,
                                                                 engine::Engine* engine);

  // RegisterDirectory registers every adapter under `directory` (--adapter-dir): DIR/NAME and
  // DIR/NAMESPACE/NAME, directories holding adapter_config.json. Returns how many; the first
  // invalid adapter fails the call with its reason.
  absl::StatusOr<int> RegisterDirectory(const std::string& directory);
  absl::StatusOr<VariantStatus> RegisterAdapter(const std::string& name, const std::string& path);
  absl::StatusOr<std::unique_ptr<AdapterUpload>> BeginUpload(const std::string& name);
  absl::StatusOr<VariantStatus> CommitUpload(std::unique_ptr<AdapterUpload> upload);
  // MakeStagingDirectory creates an empty directory DATA_DIR/tmp/PURPOSE-XXXXXX for a job's
  // output (removed at the next start-up if never published).
  absl::StatusOr<std::string> MakeStagingDirectory(const std::string& purpose) const;
  // Publish validates the adapter in `staged` (a staging directory whose files are synced),
  // moves it to DATA_DIR/adapters/NAME and registers it with `lineage`, its catalog row last.
  // On failure the staged files are left to the caller.
  // `version` is 1 for a new name; a variant copied from another replica keeps its version.
  absl::StatusOr<VariantStatus> Publish(const std::string& name, const std::string& staged,
                                        const VariantLineage& lineage, int64_t version = 1);

  // PublishReplacement publishes the adapter in `staged` as the next version of `name` (which
  // must still be at `expected_version`, else ABORTED): its files go to
  // DATA_DIR/adapters/NAME@VERSION, one catalog transaction switches the name's row to it, and
  // then one in-memory step switches every new request to it while requests already running
  // finish on the old adapter. The old version is then kept as "NAME@OLD" (`keep_previous`),
  // or retired: its adapter is freed and its files deleted once its requests finish (waiting
  // until `drain_deadline`; after that, at the next start-up). On failure before the switch
  // nothing changed and the staged files are the caller's.
  absl::StatusOr<VariantStatus> PublishReplacement(const std::string& name, const std::string& staged,
                                                   const VariantLineage& lineage, int64_t expected_version,
                                                   bool keep_previous, absl::Time drain_deadline);

  // SetObserver: who hears of publications and deletions (one; set before serving).
  void SetObserver(VariantObserver* observer) { observer_ = observer; }
  // Persisted: whether `name` has a catalog row (everything but --adapter-dir variants).
  bool Persisted(const std::string& name) const { return store_->GetVariant(name).ok(); }

  // The catalog's durable store (DATA_DIR/catalog.db), which the job runner shares.
  CatalogStore* store() const { return store_.get(); }
  // The engine's base model, which every variant's deltas fit, and its tokenizer.
  const model::LlamaModel& model() const { return engine_->model(); }
  const model::Tokenizer& tokenizer() const { return engine_->tokenizer(); }
  // The engine's clock: creation times and drain deadlines are in its time.
  common::Clock& clock() const { return engine_->clock(); }

  std::shared_ptr<const Variant> Find(const std::string& name) const { return catalog_.Find(name); }
  absl::StatusOr<VariantStatus> Get(const std::string& name) const;
  std::vector<VariantStatus> List(const std::string& prefix, const std::string& after,
                                  size_t limit) const;
  absl::Status Delete(const std::string& name, bool drain, absl::Time deadline);
  absl::StatusOr<VariantStatus> Pin(const std::string& name);
  absl::StatusOr<VariantStatus> Unpin(const std::string& name);

 private:
  VariantRegistry(VariantRegistryOptions options, engine::Engine* engine)
      : options_(std::move(options)), engine_(engine) {}
  // ReadNewAdapter validates a new variant name (free, well-formed) and reads and validates
  // the adapter at `path` against the base, into host memory.
  absl::StatusOr<deltas::PeftAdapter> ReadNewAdapter(const std::string& name, const std::string& path) const;
  // ReadAdapterAt reads and validates the adapter at `path` (errors name the variant `name`).
  absl::StatusOr<deltas::PeftAdapter> ReadAdapterAt(const std::string& name, const std::string& path) const;
  // Register makes `adapter` (read from `path`) servable as `name`, created at `created`. With
  // `persist`, its catalog row is written last (undoing the registration if that fails).
  absl::StatusOr<VariantStatus> Register(const std::string& name, const std::string& path, bool owned,
                                         bool persist, deltas::PeftAdapter adapter,
                                         const VariantLineage& lineage, absl::Time created, int64_t version = 1);
  // Adopt moves a validated adapter from `staged` to DATA_DIR/adapters/NAME and registers it.
  absl::StatusOr<VariantStatus> Adopt(const std::string& name, const std::string& staged,
                                      deltas::PeftAdapter adapter, const VariantLineage& lineage, int64_t version = 1);
  absl::Status Restore();
  // RemoveAdapterWhenUnused frees an adapter once no request uses it, trying until `deadline`
  // (once for a past one); false when requests still used it then.
  bool RemoveAdapterWhenUnused(uint64_t adapter_id, absl::Time deadline);
  // DeleteFilesOf removes an uploaded variant's directory (logging, not failing, on error);
  // registered server paths are left alone.
  void DeleteFilesOf(const Variant& variant, const std::string& name) const;
  bool IsOwned(const std::string& path) const;
  VariantStatus StatusOf(std::shared_ptr<const Variant> variant) const;
  absl::StatusOr<std::shared_ptr<const Variant>> FindOrNotFound(const std::string& name) const;
  std::string AdaptersDir() const;
  std::string TempDir() const;

  const VariantRegistryOptions options_;
  engine::Engine* const engine_;
  std::unique_ptr<CatalogStore> store_;
  VariantCatalog catalog_;
  std::atomic<VariantObserver*> observer_{nullptr};
};

}  // namespace deltaserve::control
