#include "server/control/variant_catalog.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"
#include "server/deltas/peft_adapter.h"

namespace deltaserve::control {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

std::vector<std::string> Subdirectories(const std::string& directory) {
  std::vector<std::string> names;
  DIR* handle = ::opendir(directory.c_str());
  if (handle == nullptr) return names;
  while (dirent* entry = ::readdir(handle)) {
    std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    if (IsDirectory(common::JoinPath(directory, name))) names.push_back(name);
  }
  ::closedir(handle);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

absl::Status VariantCatalog::ValidateName(const std::string& name) {
  static const std::regex kName("([a-z0-9][a-z0-9._-]{0,63}/)?[a-z0-9][a-z0-9._-]{0,63}");
  if (std::regex_match(name, kName)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "variant name \"", name, "\" is invalid: use [a-z0-9][a-z0-9._-]{0,63}, optionally prefixed "
      "by \"namespace/\" (lower-case letters, digits, '.', '_', '-')"));
}

absl::Status VariantCatalog::Register(Variant variant) {
  RETURN_IF_ERROR(ValidateName(variant.name));
  absl::MutexLock lock(&mutex_);
  if (variants_.count(variant.name) > 0) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", variant.name, "\" already exists"));
  }
  std::string name = variant.name;
  variants_[name] = std::make_shared<const Variant>(std::move(variant));
  return absl::OkStatus();
}

std::shared_ptr<const Variant> VariantCatalog::Find(const std::string& name) const {
  absl::MutexLock lock(&mutex_);
  auto it = variants_.find(name);
  return it == variants_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<const Variant>> VariantCatalog::List() const {
  absl::MutexLock lock(&mutex_);
  std::vector<std::shared_ptr<const Variant>> all;
  for (const auto& [name, variant] : variants_) all.push_back(variant);
  return all;
}

absl::StatusOr<int> RegisterAdapterDirectory(const std::string& directory,
                                             const model::LlamaModel& model,
                                             VariantCatalog& catalog) {
  if (!IsDirectory(directory)) {
    return absl::NotFoundError(absl::StrCat("--adapter-dir ", directory, " is not a directory"));
  }
  std::vector<std::pair<std::string, std::string>> found;  // name, path
  for (const std::string& name : Subdirectories(directory)) {
    const std::string path = common::JoinPath(directory, name);
    if (common::PathExists(common::JoinPath(path, "adapter_config.json"))) {
      found.push_back({name, path});
      continue;
    }
    for (const std::string& inner : Subdirectories(path)) {
      const std::string inner_path = common::JoinPath(path, inner);
      if (common::PathExists(common::JoinPath(inner_path, "adapter_config.json"))) {
        found.push_back({name + "/" + inner, inner_path});
      }
    }
  }
  for (const auto& [name, path] : found) {
    RETURN_IF_ERROR(VariantCatalog::ValidateName(name));
    absl::StatusOr<deltas::PeftAdapter> adapter =
        deltas::ReadPeftAdapter(path, model.config(), model.dtype(), model.device());
    if (!adapter.ok()) {
      return absl::Status(adapter.status().code(),
                          absl::StrCat("adapter \"", name, "\": ", adapter.status().message()));
    }
    Variant variant;
    variant.name = name;
    variant.path = path;
    variant.bytes = adapter->deltas.Bytes();
    variant.rank_summary = adapter->deltas.RankSummary();
    variant.deltas = std::make_shared<const deltas::DeltaSet>(std::move(adapter->deltas));
    variant.created = absl::Now();
    RETURN_IF_ERROR(catalog.Register(std::move(variant)));
  }
  return static_cast<int>(found.size());
}

}  // namespace deltaserve::control
