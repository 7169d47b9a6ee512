#include "server/ops/merge/low_rank_merge.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/common/torch_status.h"

namespace deltaserve::ops::merge {
namespace {

using model::Projection;

// Stacks a module's factors: A' [R, in] with each factor's scale folded in, B' [out, R].
std::pair<at::Tensor, at::Tensor> Stack(const std::vector<deltas::LowRankFactor>& factors, double weight) {
  std::vector<at::Tensor> a, b;
  for (const deltas::LowRankFactor& factor : factors) {
    a.push_back(factor.a * (weight * factor.scale));
    b.push_back(factor.b);
  }
  return {at::cat(a, 0), at::cat(b, 1)};
}

}  // namespace

absl::Status CheckInputs(const std::vector<WeightedDeltas>& inputs) {
  if (inputs.empty()) return absl::InvalidArgumentError("a merge needs at least one input");
  const int64_t layers = inputs[0].deltas->num_layers();
  for (size_t i = 1; i < inputs.size(); ++i) {
    if (inputs[i].deltas->num_layers() != layers) {
      return absl::InvalidArgumentError(absl::StrCat("input ", i, " has ", inputs[i].deltas->num_layers(),
                                                     " layers, input 0 has ", layers, ": not the same base"));
    }
  }
  return absl::OkStatus();
}

std::pair<deltas::LowRankFactor, double> TruncatedFactor(const at::Tensor& u, const at::Tensor& s,
                                                         const at::Tensor& vh, int64_t rank,
                                                         at::ScalarType dtype, double total_squared) {
  const int64_t kept = std::min<int64_t>(rank, s.size(0));
  const double total = total_squared >= 0 ? total_squared : s.pow(2).sum().item<double>();
  const double dropped = std::max(0.0, total - s.narrow(0, 0, kept).pow(2).sum().item<double>());
  at::Tensor root = s.narrow(0, 0, kept).sqrt();
  at::Tensor b = u.narrow(1, 0, kept) * root.unsqueeze(0);
  at::Tensor a = root.unsqueeze(1) * vh.narrow(0, 0, kept);
  return {{a.to(dtype).contiguous(), b.to(dtype).contiguous(), 1.0},
          total > 0 ? std::sqrt(dropped / total) : 0.0};
}

absl::StatusOr<deltas::DeltaSet> Concatenate(const std::vector<WeightedDeltas>& inputs) {
  absl::Status valid = CheckInputs(inputs);
  if (!valid.ok()) return valid;
  const int64_t layers = inputs[0].deltas->num_layers();
  deltas::DeltaSet merged(layers);
  absl::Status status = absl::OkStatus();
  absl::Status torch = common::CatchTorchErrors("concatenating deltas", [&] {
    for (int64_t layer = 0; layer < layers && status.ok(); ++layer) {
      for (int p = 0; p < deltas::kProjectionCount && status.ok(); ++p) {
        const auto projection = static_cast<Projection>(p);
        std::vector<at::Tensor> a, b;
        for (size_t i = 0; i < inputs.size(); ++i) {
          const auto& factors = inputs[i].deltas->Factors(layer, projection);
          if (factors.empty()) continue;
          auto [stacked_a, stacked_b] = Stack(factors, inputs[i].weight);
          if (!a.empty() && (stacked_a.size(1) != a[0].size(1) || stacked_b.size(0) != b[0].size(0))) {
            status = absl::InvalidArgumentError(absl::StrCat(
                "layer ", layer, " ", deltas::ProjectionName(projection), ": input ", i, " is [",
                stacked_b.size(0), ", ", stacked_a.size(1), "], an earlier input is [", b[0].size(0), ", ",
                a[0].size(1), "]: not the same base"));
            return;
          }
          a.push_back(stacked_a);
          b.push_back(stacked_b);
        }
        if (a.empty()) continue;
        merged.Add(layer, projection, {at::cat(a, 0), at::cat(b, 1), 1.0});
      }
    }
  });
  if (!torch.ok()) return torch;
  if (!status.ok()) return status;
  return merged;
}

int64_t ModuleCount(const deltas::DeltaSet& deltas) {
  int64_t count = 0;
  for (int64_t layer = 0; layer < deltas.num_layers(); ++layer) {
    for (int p = 0; p < deltas::kProjectionCount; ++p) {
      if (!deltas.Factors(layer, static_cast<Projection>(p)).empty()) ++count;
    }
  }
  return count;
}

absl::StatusOr<RecompressedDeltas> Recompress(const deltas::DeltaSet& input, int64_t rank, const MergeStep& step) {
  if (rank < 1) return absl::InvalidArgumentError(absl::StrCat("rank must be at least 1, got ", rank));
  RecompressedDeltas result{deltas::DeltaSet(input.num_layers()), {}};
  const int64_t total = ModuleCount(input);
  absl::Status stopped = absl::OkStatus();
  absl::Status torch = common::CatchTorchErrors("re-compressing deltas", [&] {
    for (int64_t layer = 0; layer < input.num_layers() && stopped.ok(); ++layer) {
      for (int p = 0; p < deltas::kProjectionCount && stopped.ok(); ++p) {
        const auto projection = static_cast<Projection>(p);
        const auto& factors = input.Factors(layer, projection);
        if (factors.empty()) continue;
        auto [stacked_a, stacked_b] = Stack(factors, 1.0);
        const at::ScalarType dtype = stacked_a.scalar_type();
        // dW = B' A' = Qb Rb (Qa Ra)^T = Qb (Rb Ra^T) Qa^T; only the small core is decomposed.
        auto [qb, rb] = at::linalg_qr(stacked_b.to(at::kDouble));
        auto [qa, ra] = at::linalg_qr(stacked_a.t().to(at::kDouble));
        auto [u, s, vh] = at::linalg_svd(at::matmul(rb, ra.t()), /*full_matrices=*/false);
        auto [factor, error] = TruncatedFactor(at::matmul(qb, u), s, at::matmul(vh, qa.t()), rank, dtype);
        result.errors.push_back({layer, deltas::ProjectionName(projection), stacked_a.size(0), factor.rank(), error});
        result.deltas.Add(layer, projection, std::move(factor));
        if (step) stopped = step(static_cast<int64_t>(result.errors.size()), total);
      }
    }
  });
  if (!torch.ok()) return torch;
  if (!stopped.ok()) return stopped;
  return result;
}

}  // namespace deltaserve::ops::merge
