#include "server/deltas/peft_adapter.h"

#include <sys/stat.h>

#include <cmath>
#include <map>
#include <regex>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"
#include "server/model/safetensors_file.h"
#include "server/model/safetensors_tensor.h"

namespace deltaserve::deltas {
namespace {

using model::Projection;

constexpr Projection kProjections[] = {Projection::kQuery, Projection::kKey,  Projection::kValue,
                                       Projection::kOutput, Projection::kGate, Projection::kUp,
                                       Projection::kDown};

absl::Status Invalid(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

std::string TensorName(int64_t layer, Projection projection, char which) {
  return absl::StrCat("base_model.model.", ModuleName(layer, projection), ".lora_", std::string(1, which),
                      ".weight");
}

}  // namespace

std::string ModuleName(int64_t layer, Projection projection) {
  return absl::StrCat("model.layers.", layer, ".", ProjectionParent(projection), ".",
                      ProjectionName(projection));
}

absl::Status CheckFactors(const DeltaSet& deltas) {
  for (int64_t layer = 0; layer < deltas.num_layers(); ++layer) {
    for (Projection projection : kProjections) {
      const std::vector<LowRankFactor>& factors = deltas.Factors(layer, projection);
      for (size_t i = 0; i < factors.size(); ++i) {
        const std::string which = factors.size() > 1 ? absl::StrCat(" (factor ", i + 1, " of ", factors.size(), ")") : "";
        for (const auto& [tensor, letter] : {std::pair{&factors[i].a, 'A'}, std::pair{&factors[i].b, 'B'}}) {
          if (!at::isfinite(*tensor).all().item<bool>()) {
            return absl::InvalidArgumentError(absl::StrCat(TensorName(layer, projection, letter), which,
                                                           " has non-finite values (NaN or infinity)"));
          }
        }
        const double scale = factors[i].scale;
        if (!std::isfinite(scale) || std::abs(scale) > kMaxDeltaScale) {
          return absl::InvalidArgumentError(absl::StrCat(
              ModuleName(layer, projection), which, " has scale ", scale, " (lora_alpha / r); it must be finite and at most ",
              kMaxDeltaScale, " in size"));
        }
        // A bound on every entry of scale * B A, whatever the split of each rank component's
        // size between its column of B and its row of A.
        const at::Tensor b_peaks = factors[i].b.abs().amax(0).to(at::kDouble);
        const at::Tensor a_peaks = factors[i].a.abs().amax(1).to(at::kDouble);
        const double entry = std::abs(scale) * (b_peaks * a_peaks).sum().item<double>();
        if (!(entry <= kMaxDeltaEntry)) {
          return absl::InvalidArgumentError(absl::StrCat(
              ModuleName(layer, projection), which, "'s delta may reach ", entry,
              " in one entry (|scale| * sum over the rank of max|B column| * max|A row|), above ", kMaxDeltaEntry,
              ": a delta that large overwhelms the weight it adapts"));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& directory,
                                            const model::ModelConfig& base, at::ScalarType dtype,
                                            const at::Device& device) {
  const std::string weights_path = common::JoinPath(directory, "adapter_model.safetensors");
  if (!common::PathExists(weights_path)) {
    if (common::PathExists(common::JoinPath(directory, "adapter_model.bin"))) {
      return absl::InvalidArgumentError(absl::StrCat(
          directory, ": adapter_model.bin is a pickle file and is never loaded; convert the adapter "
                     "to adapter_model.safetensors"));
    }
    return absl::NotFoundError(absl::StrCat(directory, " has no adapter_model.safetensors"));
  }
  ASSIGN_OR_RETURN(std::string config_text,
                   common::ReadFileToString(common::JoinPath(directory, "adapter_config.json"), 1u << 20));
  ASSIGN_OR_RETURN(PeftAdapterConfig config, PeftAdapterConfig::FromJson(config_text));
  ASSIGN_OR_RETURN(model::SafetensorsFile file, model::SafetensorsFile::Open(weights_path));

  static const std::regex kName(
      R"(base_model\.model\.model\.layers\.(\d{1,6})\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.lora_(A|B)\.weight)");
  struct Pair {
    const model::StoredTensor* a = nullptr;
    const model::StoredTensor* b = nullptr;
  };
  std::map<std::pair<int64_t, int>, Pair> modules;
  for (const auto& [name, stored] : file.tensors()) {
    std::smatch match;
    // Real names are under 80 bytes; std::regex's recursion grows with the input, so a long
    // name is refused before it.
    if (name.size() > 256 || !std::regex_match(name, match, kName)) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, " is not a LoRA factor of a q/k/v/o/gate/up/down projection"));
    }
    const int64_t layer = std::stoll(match[1]);
    if (layer >= base.num_hidden_layers) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, " is for layer ", layer, " but the base model has ",
                                                base.num_hidden_layers, " layers"));
    }
    Projection projection = Projection::kQuery;
    for (Projection candidate : kProjections) {
      if (match[3] == ProjectionName(candidate)) projection = candidate;
    }
    if (match[2] != ProjectionParent(projection)) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, ": ", ProjectionName(projection), " is not under ", match[2].str()));
    }
    if (!config.Targets(ModuleName(layer, projection))) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, " is for module ", ModuleName(layer, projection),
                                                ", which adapter_config.json's target_modules does not include"));
    }
    if (stored.dtype != model::StoredDtype::kF32 && stored.dtype != model::StoredDtype::kF16 &&
        stored.dtype != model::StoredDtype::kBF16) {
      return Invalid(weights_path, absl::StrCat("tensor ", name, " has dtype ", model::DtypeName(stored.dtype),
                                                "; LoRA factors must be F32, F16 or BF16"));
    }
    Pair& pair = modules[{layer, static_cast<int>(projection)}];
    (match[4] == "A" ? pair.a : pair.b) = &stored;
  }
  if (modules.empty()) return Invalid(weights_path, "the adapter has no LoRA tensors");

  PeftAdapter adapter{config, DeltaSet(base.num_hidden_layers)};
  for (const auto& [key, pair] : modules) {
    const auto [layer, projection_index] = key;
    const Projection projection = static_cast<Projection>(projection_index);
    const std::string module = ModuleName(layer, projection);
    if (pair.a == nullptr || pair.b == nullptr) {
      return Invalid(weights_path, absl::StrCat("tensor ", TensorName(layer, projection, pair.a == nullptr ? 'A' : 'B'),
                                                " is missing (its pair is present)"));
    }
    const int64_t rank = config.RankFor(module);
    const auto [out_features, in_features] = ProjectionShape(base, projection);
    const std::vector<int64_t> a_shape = {rank, in_features};
    const std::vector<int64_t> b_shape = {out_features, rank};
    if (pair.a->shape != a_shape) {
      return Invalid(weights_path, absl::StrCat("tensor ", TensorName(layer, projection, 'A'), " has shape [",
                                                absl::StrJoin(pair.a->shape, ", "), "], expected [",
                                                absl::StrJoin(a_shape, ", "), "] (rank ", rank, ")"));
    }
    if (pair.b->shape != b_shape) {
      return Invalid(weights_path, absl::StrCat("tensor ", TensorName(layer, projection, 'B'), " has shape [",
                                                absl::StrJoin(pair.b->shape, ", "), "], expected [",
                                                absl::StrJoin(b_shape, ", "), "] (rank ", rank, ")"));
    }
    ASSIGN_OR_RETURN(at::Tensor a, model::ToTensor(*pair.a, dtype, device));
    ASSIGN_OR_RETURN(at::Tensor b, model::ToTensor(*pair.b, dtype, device));
    adapter.deltas.Add(layer, projection, {a, b, config.ScaleFor(module)});
  }
  if (absl::Status finite = CheckFactors(adapter.deltas); !finite.ok()) return Invalid(weights_path, std::string(finite.message()));
  return adapter;
}

absl::Status WritePeftAdapter(const std::string& directory, const PeftAdapterConfig& base_config,
                              const DeltaSet& deltas) {
  PeftAdapterConfig config = base_config;
  config.target_modules.clear();
  config.target_modules_regex.clear();
  config.rank_pattern.clear();
  config.alpha_pattern.clear();
  std::set<std::string> kinds;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (int64_t layer = 0; layer < deltas.num_layers(); ++layer) {
    for (Projection projection : kProjections) {
      const std::vector<LowRankFactor>& factors = deltas.Factors(layer, projection);
      if (factors.empty()) continue;
      const std::string module = ModuleName(layer, projection);
      kinds.insert(ProjectionName(projection));
      at::Tensor a, b;
      int64_t rank = 0;
      double scale = 1.0;
      if (factors.size() == 1) {
        a = factors[0].a;
        b = factors[0].b;
        rank = factors[0].rank();
        scale = factors[0].scale;
      } else {
        std::vector<at::Tensor> as, bs;
        for (const LowRankFactor& factor : factors) {
          as.push_back(factor.a);
          bs.push_back(factor.b * factor.scale);
          rank += factor.rank();
        }
        a = at::cat(as, 0);
        b = at::cat(bs, 1);
      }
      const double alpha = scale * (config.use_rslora ? std::sqrt(static_cast<double>(rank)) : rank);
      if (rank != config.r) config.rank_pattern.push_back({module, rank});
      if (alpha != config.lora_alpha) config.alpha_pattern.push_back({module, alpha});
      tensors.push_back({"base_model.model." + module + ".lora_A.weight", a});
      tensors.push_back({"base_model.model." + module + ".lora_B.weight", b});
    }
  }
  if (tensors.empty()) return absl::InvalidArgumentError("the DeltaSet is empty: nothing to write");
  config.target_modules.assign(kinds.begin(), kinds.end());
  ::mkdir(directory.c_str(), 0755);
  RETURN_IF_ERROR(model::WriteSafetensors(common::JoinPath(directory, "adapter_model.safetensors"), tensors,
                                          {{"format", "pt"}}));
  return common::WriteFileAtomically(common::JoinPath(directory, "adapter_config.json"), config.ToJson());
}

}  // namespace deltaserve::deltas
