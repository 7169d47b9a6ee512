#include "server/ops/merge/dense_merge.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/common/torch_status.h"

namespace deltaserve::ops::merge {
namespace {

enum class Sparsify { kNone, kMagnitude, kDare, kBreadcrumbs };

struct Method {
  Sparsify sparsify;
  bool ties;
};

bool Lookup(const std::string& name, Method* method) {
  static const std::pair<const char*, Method> kMethods[] = {
      {"task_arithmetic", {Sparsify::kNone, false}},  {"magnitude_prune", {Sparsify::kMagnitude, false}},
      {"dare_linear", {Sparsify::kDare, false}},       {"breadcrumbs", {Sparsify::kBreadcrumbs, false}},
      {"ties", {Sparsify::kMagnitude, true}},          {"dare_ties", {Sparsify::kDare, true}},
      {"breadcrumbs_ties", {Sparsify::kBreadcrumbs, true}}};
  for (const auto& [known, value] : kMethods) {
    if (name == known) {
      *method = value;
      return true;
    }
  }
  return false;
}

// TopMask marks exactly `count` entries of a flat magnitude tensor: the largest, ties broken
// towards lower indices. A selection (kthvalue) rather than a sort: O(n), where sorting every
// task vector of a merge dominated its time. Masks for growing counts are nested.
at::Tensor TopMask(const at::Tensor& magnitude, int64_t count) {
  const int64_t n = magnitude.numel();
  if (count <= 0) return at::zeros_like(magnitude, at::kBool);
  if (count >= n) return at::ones_like(magnitude, at::kBool);
  // The count-th largest is the (n - count + 1)-th smallest.
  const at::Tensor threshold = std::get<0>(at::kthvalue(magnitude, n - count + 1));
  const at::Tensor above = magnitude > threshold;
  const at::Tensor equal = magnitude == threshold;
  const int64_t remaining = count - above.sum().item<int64_t>();
  return above | (equal & (equal.cumsum(0) <= remaining));
}

// Keeps the entries ranked [skip, skip + keep) by decreasing magnitude; the rest become 0.
at::Tensor KeepByRank(const at::Tensor& tau, int64_t skip, int64_t keep) {
  const at::Tensor flat = tau.reshape({-1});
  const int64_t n = flat.numel();
  keep = std::clamp<int64_t>(keep, 1, n);
  skip = std::clamp<int64_t>(skip, 0, n - keep);
  const at::Tensor magnitude = flat.abs();
  at::Tensor mask = TopMask(magnitude, skip + keep);
  if (skip > 0) mask &= TopMask(magnitude, skip).logical_not();
  return (flat * mask).reshape(tau.sizes());
}

at::Tensor Sparsified(const at::Tensor& tau, Sparsify sparsify, const DenseMergeOptions& options,
                      at::Generator& generator) {
  const int64_t n = tau.numel();
  switch (sparsify) {
    case Sparsify::kNone:
      return tau;
    case Sparsify::kMagnitude:
      return KeepByRank(tau, 0, static_cast<int64_t>(n * options.density));
    case Sparsify::kBreadcrumbs:
      return KeepByRank(tau, static_cast<int64_t>(n * options.gamma),
                        static_cast<int64_t>(n * options.density));
    case Sparsify::kDare: {
      at::Tensor keep = at::empty_like(tau).bernoulli_(options.density, generator);
      return tau * keep / options.density;
    }
  }
  return tau;
}

}  // namespace

bool IsDenseMergeMethod(const std::string& method) {
  Method ignored;
  return Lookup(method, &ignored);
}

absl::Status ValidateDenseMerge(const DenseMergeOptions& options) {
  Method method;
  if (!Lookup(options.method, &method)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown merge method \"", options.method,
        "\": use task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties or "
        "magnitude_prune"));
  }
  if (!(options.density > 0.0 && options.density <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("density ", options.density, " is outside (0, 1]"));
  }
  if (!(options.gamma >= 0.0 && options.gamma < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("gamma ", options.gamma, " is outside [0, 1)"));
  }
  if (!std::isfinite(options.lambda)) return absl::InvalidArgumentError("lambda must be finite");
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> MergeTensors(const std::vector<at::Tensor>& task_vectors,
                                        const std::vector<double>& weights,
                                        const DenseMergeOptions& options, uint64_t seed) {
  absl::Status valid = ValidateDenseMerge(options);
  if (!valid.ok()) return valid;
  if (task_vectors.empty() || task_vectors.size() != weights.size()) {
    return absl::InvalidArgumentError("a merge needs one weight per input and at least one input");
  }
  Method method;
  Lookup(options.method, &method);
  at::Tensor merged;
  absl::Status status = common::CatchTorchErrors("merging task vectors", [&] {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    std::vector<at::Tensor> sparse;
    at::Tensor weight_column = at::tensor(std::vector<double>(weights.begin(), weights.end()), at::kFloat);
    for (const at::Tensor& tau : task_vectors) {
      sparse.push_back(Sparsified(tau.to(at::kFloat), method.sparsify, options, generator));
    }
    at::Tensor stacked = at::stack(sparse);  // [inputs, ...]
    std::vector<int64_t> shape(stacked.dim(), 1);
    shape[0] = stacked.size(0);
    at::Tensor w = weight_column.reshape(shape).to(stacked.device());
    at::Tensor weighted = stacked * w;
    if (!method.ties) {
      merged = weighted.sum(0) * options.lambda;
      return;
    }
    at::Tensor sign = weighted.sum(0).sign();
    at::Tensor agree = (stacked.sign() == sign.unsqueeze(0)) & (stacked != 0);
    at::Tensor agree_f = agree.to(at::kFloat);
    at::Tensor divisor = (w * agree_f).sum(0);
    divisor = at::where(divisor == 0, at::ones_like(divisor), divisor);
    merged = (weighted * agree_f).sum(0) / divisor * options.lambda;
  });
  if (!status.ok()) return status;
  return merged;
}

}  // namespace deltaserve::ops::merge
