// VariantCatalog: the variants the server can serve, by name. In memory for now (issue 4 makes
// it persistent); every registered variant's deltas are resident on the model's device.
// Names are [a-z0-9][a-z0-9._-]{0,63}, optionally prefixed by "namespace/" with the same
// rule. Thread-safe; Find returns a shared pointer, so a variant removed later stays valid for
// requests already holding it.
//   ASSIGN_OR_RETURN(int count, RegisterAdapterDirectory(dir, model, catalog));
//   std::shared_ptr<const Variant> variant = catalog.Find("acme/support-bot");
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"

namespace deltaserve::control {

struct Variant {
  std::string name;
  std::string kind = "ADAPTER";
  std::string path;  // where its artifact was read from
  std::shared_ptr<const deltas::DeltaSet> deltas;
  int64_t bytes = 0;
  std::string rank_summary;
  absl::Time created;
};

class VariantCatalog {
 public:
  // ValidateName explains what is wrong with a variant name (INVALID_ARGUMENT).
  static absl::Status ValidateName(const std::string& name);

  // Register adds a variant; ALREADY_EXISTS when the name is taken.
  absl::Status Register(Variant variant);
  std::shared_ptr<const Variant> Find(const std::string& name) const;
  std::vector<std::shared_ptr<const Variant>> List() const;

 private:
  mutable absl::Mutex mutex_;
  std::map<std::string, std::shared_ptr<const Variant>> variants_ ABSL_GUARDED_BY(mutex_);
};

// RegisterAdapterDirectory registers every PEFT adapter under `directory`: DIR/NAME and
// DIR/NAMESPACE/NAME (directories holding adapter_config.json), loaded onto the model's
// device in its dtype. Returns how many it registered; the first invalid adapter fails the
// whole call with its reason.
absl::StatusOr<int> RegisterAdapterDirectory(const std::string& directory,
                                             const model::LlamaModel& model,
                                             VariantCatalog& catalog);

}  // namespace deltaserve::control
