#include "server/ops/merge/merge_variants.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"

namespace deltaserve::ops::merge {
namespace {

using model::Projection;

double LayerScale(const MergeRecipe& recipe, int64_t layer, int64_t layers) {
  if (!recipe.lines_alpha.has_value()) return 1.0;
  const double position = layers > 1 ? static_cast<double>(layer) / (layers - 1) : 0.0;
  return *recipe.lines_alpha + recipe.lines_beta * position;
}

// LiNeS on a low-rank set: each factor's scale times its layer's factor.
deltas::DeltaSet ScaledByLayer(const deltas::DeltaSet& input, const MergeRecipe& recipe) {
  deltas::DeltaSet scaled(input.num_layers());
  for (int64_t layer = 0; layer < input.num_layers(); ++layer) {
    const double scale = LayerScale(recipe, layer, input.num_layers());
    for (int p = 0; p < deltas::kProjectionCount; ++p) {
      for (deltas::LowRankFactor factor : input.Factors(layer, static_cast<Projection>(p))) {
        factor.scale *= scale;
        scaled.Add(layer, static_cast<Projection>(p), std::move(factor));
      }
    }
  }
  return scaled;
}

// The modules any input has factors for.
int64_t ModulesOfAny(const std::vector<WeightedDeltas>& inputs) {
  int64_t count = 0;
  const int64_t layers = inputs[0].deltas->num_layers();
  for (int64_t layer = 0; layer < layers; ++layer) {
    for (int p = 0; p < deltas::kProjectionCount; ++p) {
      for (const WeightedDeltas& input : inputs) {
        if (!input.deltas->Factors(layer, static_cast<Projection>(p)).empty()) {
          ++count;
          break;
        }
      }
    }
  }
  return count;
}

absl::StatusOr<RecompressedDeltas> DenseMergeVariants(const std::vector<WeightedDeltas>& inputs,
                                                      const MergeRecipe& recipe, const MergeStep& step) {
  DenseMergeOptions options{recipe.method, recipe.density, recipe.gamma, recipe.lambda};
  const int64_t layers = inputs[0].deltas->num_layers();
  const int64_t total = ModulesOfAny(inputs);
  RecompressedDeltas result{deltas::DeltaSet(layers), {}};
  std::vector<double> weights;
  for (const WeightedDeltas& input : inputs) weights.push_back(input.weight);
  for (int64_t layer = 0; layer < layers; ++layer) {
    for (int p = 0; p < deltas::kProjectionCount; ++p) {
      const auto projection = static_cast<Projection>(p);
      // Every input's dense delta for this module (zero where an input has none).
      std::vector<at::Tensor> taus;
      at::ScalarType dtype = at::kFloat;
      bool any = false;
      int64_t input_rank = 0;
      for (const WeightedDeltas& input : inputs) {
        for (const deltas::LowRankFactor& factor : input.deltas->Factors(layer, projection)) {
          input_rank += factor.rank();
        }
        at::Tensor dense = input.deltas->Merged(layer, projection);
        if (dense.defined()) {
          any = true;
          dtype = input.deltas->Factors(layer, projection)[0].a.scalar_type();
        }
        taus.push_back(dense);
      }
      if (!any) continue;
      std::vector<int64_t> shape;
      for (const at::Tensor& tau : taus) {
        if (tau.defined()) shape = tau.sizes().vec();
      }
      for (size_t i = 0; i < taus.size(); ++i) {
        if (!taus[i].defined()) {
          taus[i] = at::zeros(shape, at::kFloat);
        } else if (taus[i].sizes() != at::IntArrayRef(shape)) {
          return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " ", deltas::ProjectionName(projection),
                                                         ": input ", i, " has another shape: not the same base"));
        }
      }
      const uint64_t module_seed = recipe.seed + static_cast<uint64_t>(layer * deltas::kProjectionCount + p);
      ASSIGN_OR_RETURN(at::Tensor merged, MergeTensors(taus, weights, options, module_seed));
      std::pair<deltas::LowRankFactor, double> compressed;
      RETURN_IF_ERROR(common::CatchTorchErrors("re-compressing a merged module", [&] {
        compressed = Compress(merged * LayerScale(recipe, layer, layers), recipe.rank, dtype, module_seed);
      }));
      auto& [factor, error] = compressed;
      ModuleError report{layer, deltas::ProjectionName(projection), input_rank, factor.rank(), error};
      result.deltas.Add(layer, projection, std::move(factor));
      result.errors.push_back(report);
      if (step) RETURN_IF_ERROR(step(static_cast<int64_t>(result.errors.size()), total));
    }
  }
  return result;
}

}  // namespace

std::pair<deltas::LowRankFactor, double> Compress(const at::Tensor& dense, int64_t rank, at::ScalarType dtype,
                                                 uint64_t seed) {
  constexpr int64_t kOversampling = 10;
  constexpr int kPowerIterations = 2;
  const at::Tensor matrix = dense.to(at::kDouble);
  const int64_t sketch = rank + kOversampling;
  if (2 * sketch >= std::min(matrix.size(0), matrix.size(1))) {
    auto [u, s, vh] = at::linalg_svd(matrix, /*full_matrices=*/false);
    return TruncatedFactor(u, s, vh, rank, dtype);
  }
  // Randomized range finder with power iterations (Halko, Martinsson & Tropp 2011): Q spans
  // M's leading singular directions; the SVD of the small Q^T M gives the truncated factor.
  // Since Q is orthonormal, ||M - Q (Q^T M)_k||^2 = ||M||^2 - sum of the kept s^2 exactly, so
  // the reported error is the returned factor's true error.
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor omega = at::randn({matrix.size(1), sketch}, generator, at::TensorOptions().dtype(at::kDouble));
  at::Tensor q = std::get<0>(at::linalg_qr(at::matmul(matrix, omega.to(matrix.device()))));
  for (int i = 0; i < kPowerIterations; ++i) {
    at::Tensor z = std::get<0>(at::linalg_qr(at::matmul(matrix.t(), q)));
    q = std::get<0>(at::linalg_qr(at::matmul(matrix, z)));
  }
  auto [ub, s, vh] = at::linalg_svd(at::matmul(q.t(), matrix), /*full_matrices=*/false);
  return TruncatedFactor(at::matmul(q, ub), s, vh, rank, dtype, matrix.pow(2).sum().item<double>());
}

bool IsExactMerge(const std::string& method) { return method == "cat" || method == "linear"; }

absl::Status ValidateMergeRecipe(const MergeRecipe& recipe) {
  if (!IsExactMerge(recipe.method) && recipe.method != "svd" && !IsDenseMergeMethod(recipe.method)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown merge method \"", recipe.method,
        "\": use cat, linear, svd, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, "
        "breadcrumbs_ties or magnitude_prune"));
  }
  if (recipe.lines_alpha.has_value() && !(std::isfinite(*recipe.lines_alpha) && std::isfinite(recipe.lines_beta))) {
    return absl::InvalidArgumentError("lines_alpha and lines_beta must be finite");
  }
  if (IsExactMerge(recipe.method)) return absl::OkStatus();
  if (recipe.rank < 1) {
    return absl::InvalidArgumentError(absl::StrCat("rank must be at least 1 for method \"", recipe.method,
                                                   "\", got ", recipe.rank));
  }
  if (recipe.method == "svd") return absl::OkStatus();
  return ValidateDenseMerge(DenseMergeOptions{recipe.method, recipe.density, recipe.gamma, recipe.lambda});
}

absl::StatusOr<RecompressedDeltas> MergeVariants(const std::vector<WeightedDeltas>& inputs,
                                                 const MergeRecipe& recipe, const MergeStep& step) {
  RETURN_IF_ERROR(ValidateMergeRecipe(recipe));
  RETURN_IF_ERROR(CheckInputs(inputs));
  // task_arithmetic sparsifies nothing: it is lambda times the exact sum, so it takes the
  // low-rank path (QR + a small SVD) instead of decomposing each dense module.
  if (IsExactMerge(recipe.method) || recipe.method == "svd" || recipe.method == "task_arithmetic") {
    std::vector<WeightedDeltas> weighted = inputs;
    if (recipe.method == "task_arithmetic") {
      for (WeightedDeltas& input : weighted) input.weight *= recipe.lambda;
    }
    ASSIGN_OR_RETURN(deltas::DeltaSet combined, Concatenate(weighted));
    if (recipe.lines_alpha.has_value()) combined = ScaledByLayer(combined, recipe);
    if (IsExactMerge(recipe.method)) return RecompressedDeltas{std::move(combined), {}};
    return Recompress(combined, recipe.rank, step);
  }
  return DenseMergeVariants(inputs, recipe, step);
}

int64_t EstimateMergeBytes(const model::ModelConfig& config, const MergeRecipe& recipe,
                           const std::vector<int64_t>& input_float32_bytes, int64_t summed_input_rank) {
  int64_t inputs = 0;
  for (int64_t bytes : input_float32_bytes) inputs += bytes;
  int64_t largest_module = 0, largest_side = 0, summed_sides = 0;
  for (int p = 0; p < deltas::kProjectionCount; ++p) {
    auto [out, in] = deltas::ProjectionShape(config, static_cast<Projection>(p));
    largest_module = std::max(largest_module, out * in);
    largest_side = std::max(largest_side, out + in);
    summed_sides += out + in;
  }
  if (IsExactMerge(recipe.method)) return 3 * inputs;  // inputs, concatenation, scaled copies
  const int64_t output = recipe.rank * config.num_hidden_layers * summed_sides * 4;
  const int64_t count = static_cast<int64_t>(input_float32_bytes.size());
  const bool low_rank = recipe.method == "svd" || recipe.method == "task_arithmetic";
  // Low rank: the stacked factors and their float64 QR factors. Dense: each input's tau, the
  // merged tensor and the method's masks, then the float64 SVD (input copy, U, Vh).
  // Dense, per entry of the largest module: each input's tau (4 bytes), its sparsified copy,
  // and the stacked, weighted, sign, agreement and product tensors of TIES (about 32 bytes per
  // input); the transient argsort of one tau (about 28); the float64 matrix and sketches of
  // the re-compression (about 32). Measured peaks stay below this (bench/run_jobs.sh).
  const int64_t working = low_rank ? 2 * inputs + largest_side * summed_input_rank * 8 * 3
                                   : (36 * count + 64) * largest_module;
  return inputs + output + working;
}

}  // namespace deltaserve::ops::merge
