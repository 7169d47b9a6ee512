#include "server/ops/edit/key_statistics.h"

#include <c10/core/InferenceMode.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/common/file_util.h"
#include "server/common/status_macros.h"
#include "server/common/torch_status.h"
#include "server/model/safetensors_file.h"
#include "server/model/safetensors_tensor.h"
#include "server/ops/edit/edit_hook.h"

namespace deltaserve::ops::edit {

absl::StatusOr<std::map<int64_t, SecondMoment>> CollectSecondMoments(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer, const deltas::DeltaSet* parent,
    const std::vector<std::string>& texts, const std::vector<int64_t>& layers, int64_t max_tokens,
    const std::function<void(int64_t, int64_t)>& progress) {
  const model::ModelConfig& config = model.config();
  if (layers.empty()) return absl::InvalidArgumentError("no layer to collect key statistics for");
  std::map<int64_t, SecondMoment> moments;
  EditHook hook(parent);
  for (int64_t layer : layers) {
    if (layer < 0 || layer >= config.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range: the base model has ",
                                                     config.num_hidden_layers, " layers"));
    }
    moments.emplace(layer, SecondMoment(config.intermediate_size));
    hook.Watch(layer);
  }
  c10::InferenceMode inference;
  for (size_t i = 0; i < texts.size(); ++i) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.EncodePrompt(texts[i]));
    if (static_cast<int64_t>(ids.size()) > max_tokens) ids.resize(max_tokens);
    if (ids.empty()) continue;
    model::ForwardBatch batch;
    batch.token_ids.assign(ids.begin(), ids.end());
    batch.sequences.push_back({0, static_cast<int64_t>(ids.size()), nullptr});
    batch.logit_rows = {static_cast<int64_t>(ids.size()) - 1};
    batch.deltas = &hook;
    hook.Clear();
    RETURN_IF_ERROR(model.Run(batch).status());
    for (auto& [layer, moment] : moments) RETURN_IF_ERROR(moment.Add(hook.Keys(layer)));
    if (progress) progress(static_cast<int64_t>(i) + 1, static_cast<int64_t>(texts.size()));
  }
  return moments;
}

absl::Status SaveSecondMoment(const std::string& path, const SecondMoment& moment) {
  return model::WriteSafetensors(path, {{"sum", moment.sum().cpu().contiguous()}},
                                 {{"count", std::to_string(moment.count())}});
}

absl::StatusOr<SecondMoment> LoadSecondMoment(const std::string& path) {
  if (!common::PathExists(path)) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
  auto file = model::SafetensorsFile::Open(path);
  if (!file.ok()) return absl::DataLossError(absl::StrCat(path, ": ", file.status().message()));
  const model::StoredTensor* sum = file->Find("sum");
  auto count = file->metadata().find("count");
  int64_t keys = 0;
  if (sum == nullptr || sum->shape.size() != 2 || sum->shape[0] != sum->shape[1] || count == file->metadata().end() ||
      !absl::SimpleAtoi(count->second, &keys) || keys < 0) {
    return absl::DataLossError(absl::StrCat(path, " is not a key statistics file (\"sum\" [d, d] and a \"count\")"));
  }
  ASSIGN_OR_RETURN(at::Tensor tensor, model::ToTensor(*sum, at::kFloat, at::kCPU));
  return SecondMoment(tensor.clone(), keys);
}

}  // namespace deltaserve::ops::edit
