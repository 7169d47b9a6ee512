// Key statistics for knowledge edits: the second moment C = E[k k^T] of the MLP down-projection
// inputs of chosen layers over a body of text, as the model (base plus an optional parent
// variant) computes them.
//   - CollectSecondMoments runs each text alone (at most max_tokens tokens, BOS first) and adds
//     its keys at every watched layer to that layer's SecondMoment before the next text: one
//     text's keys are the most ever held. `progress` is told after each text (texts done, total).
//   - SaveSecondMoment / LoadSecondMoment keep one layer's statistics as a safetensors file
//     ("sum" float32 [d, d], metadata "count"), the cache that edit jobs reuse per (base model,
//     layer, dataset).
// Blocking; runs under inference mode.
//   ASSIGN_OR_RETURN(auto moments, CollectSecondMoments(model, tokenizer, nullptr, texts, {4, 5}, 256));
//   RETURN_IF_ERROR(SaveSecondMoment(path, moments.at(4)));
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/deltas/delta_set.h"
#include "server/model/llama_model.h"
#include "server/model/tokenizer.h"
#include "server/ops/edit/second_moment.h"

namespace deltaserve::ops::edit {

// CollectSecondMoments: INVALID_ARGUMENT for a layer out of range or no layer.
absl::StatusOr<std::map<int64_t, SecondMoment>> CollectSecondMoments(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer, const deltas::DeltaSet* parent,
    const std::vector<std::string>& texts, const std::vector<int64_t>& layers, int64_t max_tokens,
    const std::function<void(int64_t, int64_t)>& progress = nullptr);

absl::Status SaveSecondMoment(const std::string& path, const SecondMoment& moment);
// LoadSecondMoment: NOT_FOUND when the file is absent; DATA_LOSS when it is not a statistics file.
absl::StatusOr<SecondMoment> LoadSecondMoment(const std::string& path);

}  // namespace deltaserve::ops::edit
