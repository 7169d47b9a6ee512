#include "server/control/variant_catalog.h"

#include <regex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"

namespace deltaserve::control {

std::string NamespaceOf(const std::string& name) {
  const size_t slash = name.find('/');
  return slash == std::string::npos ? "" : name.substr(0, slash);
}

absl::Status CheckServable(const Variant& variant) {
  if (variant.state == "READY") return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("variant \"", variant.name, "\" is ", variant.state, ": ", variant.broken_reason));
}

absl::Status VariantCatalog::ValidateName(const std::string& name) {
  // "namespace/name", each part at most 64 bytes; longer input is refused before the regex (and
  // not echoed whole in the message).
  constexpr size_t kMaxNameBytes = 64 + 1 + 64;
  static const std::regex kName("([a-z0-9][a-z0-9._-]{0,63}/)?[a-z0-9][a-z0-9._-]{0,63}");
  if (name.size() <= kMaxNameBytes && std::regex_match(name, kName)) return absl::OkStatus();
  const std::string shown = name.size() <= kMaxNameBytes ? name : name.substr(0, kMaxNameBytes) + "...";
  return absl::InvalidArgumentError(absl::StrCat(
      "variant name \"", shown, "\" is invalid: use [a-z0-9][a-z0-9._-]{0,63}, optionally prefixed "
      "by \"namespace/\" (lower-case letters, digits, '.', '_', '-')"));
}

absl::Status VariantCatalog::ValidateReference(const std::string& name) {
  // NAME@VERSION: a version of 1 to 18 digits without a leading zero.
  const size_t at = name.rfind('@');
  if (at != std::string::npos) {
    const std::string_view version = std::string_view(name).substr(at + 1);
    const bool numeric = !version.empty() && version.size() <= 18 && version[0] != '0' &&
                         version.find_first_not_of("0123456789") == std::string_view::npos;
    if (numeric) return ValidateName(name.substr(0, at));
  }
  return ValidateName(name);
}

std::string VariantCatalog::VersionName(const std::string& name, int64_t version) {
  return absl::StrCat(name, "@", version);
}

absl::Status VariantCatalog::Register(std::shared_ptr<const Variant> variant) {
  RETURN_IF_ERROR(ValidateReference(variant->name));
  absl::MutexLock lock(&mutex_);
  if (variants_.count(variant->name) > 0) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", variant->name, "\" already exists"));
  }
  const std::string name = variant->name;
  variants_[name] = std::move(variant);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Variant>> VariantCatalog::Remove(const std::string& name) {
  absl::MutexLock lock(&mutex_);
  auto it = variants_.find(name);
  if (it == variants_.end()) {
    return absl::NotFoundError(absl::StrCat("variant \"", name, "\" does not exist"));
  }
  std::shared_ptr<const Variant> removed = std::move(it->second);
  variants_.erase(it);
  return removed;
}

absl::Status VariantCatalog::Replace(std::shared_ptr<const Variant> current, std::shared_ptr<const Variant> previous) {
  absl::MutexLock lock(&mutex_);
  auto it = variants_.find(current->name);
  if (it == variants_.end()) {
    return absl::NotFoundError(absl::StrCat("variant \"", current->name, "\" does not exist"));
  }
  if (previous != nullptr && variants_.count(previous->name) > 0) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", previous->name, "\" already exists"));
  }
  it->second = std::move(current);
  if (previous != nullptr) {
    const std::string name = previous->name;
    variants_[name] = std::move(previous);
  }
  return absl::OkStatus();
}

std::shared_ptr<const Variant> VariantCatalog::Find(const std::string& name) const {
  absl::MutexLock lock(&mutex_);
  auto it = variants_.find(name);
  return it == variants_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<const Variant>> VariantCatalog::List(const std::string& prefix,
                                                                 const std::string& after,
                                                                 size_t limit) const {
  absl::MutexLock lock(&mutex_);
  std::vector<std::shared_ptr<const Variant>> page;
  auto it = !after.empty() && after >= prefix ? variants_.upper_bound(after)
                                             : variants_.lower_bound(prefix);
  for (; it != variants_.end() && page.size() < limit; ++it) {
    if (!absl::StartsWith(it->first, prefix)) break;
    page.push_back(it->second);
  }
  return page;
}

}  // namespace deltaserve::control
