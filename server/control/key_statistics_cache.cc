#include "server/control/key_statistics_cache.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/ops/edit/key_statistics.h"

namespace deltaserve::control {
namespace {

constexpr int64_t kMaxTokensPerText = 256;
constexpr size_t kTextsPerChunk = 16;

}  // namespace

std::string KeyStatisticsCache::Path(int64_t layer, const std::string& source_sha256) const {
  return absl::StrCat(directory_, "/", model_fingerprint_, "/", source_sha256, "/layer-", layer, ".safetensors");
}

bool KeyStatisticsCache::Cached(int64_t layer, const std::string& source_sha256) const {
  std::error_code error;
  return std::filesystem::exists(Path(layer, source_sha256), error);
}

absl::StatusOr<KeyStatistics> KeyStatisticsCache::Ensure(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer, const std::vector<int64_t>& layers,
    const StatisticsSource& source, const std::function<absl::Status(int64_t, int64_t)>& step) const {
  KeyStatistics statistics;
  std::vector<int64_t> missing;
  for (int64_t layer : layers) {
    absl::StatusOr<ops::edit::SecondMoment> cached = ops::edit::LoadSecondMoment(Path(layer, source.sha256));
    if (cached.ok() && cached->dimension() == model.config().intermediate_size && cached->count() > 0) {
      statistics.covariances[layer] = cached->Mean().to(at::kDouble);
      statistics.keys[layer] = cached->count();
      statistics.reused.push_back(layer);
    } else {
      missing.push_back(layer);
    }
  }
  if (missing.empty()) return statistics;
  if (source.texts.empty()) return absl::InvalidArgumentError("the statistics dataset has no rows");

  std::map<int64_t, ops::edit::SecondMoment> totals;
  const int64_t total = static_cast<int64_t>(source.texts.size());
  for (size_t begin = 0; begin < source.texts.size(); begin += kTextsPerChunk) {
    const size_t end = std::min(source.texts.size(), begin + kTextsPerChunk);
    const std::vector<std::string> chunk(source.texts.begin() + begin, source.texts.begin() + end);
    ASSIGN_OR_RETURN(auto moments,
                     ops::edit::CollectSecondMoments(model, tokenizer, nullptr, chunk, missing, kMaxTokensPerText));
    for (auto& [layer, moment] : moments) {
      auto found = totals.find(layer);
      if (found == totals.end()) {
        totals.emplace(layer, std::move(moment));
      } else {
        found->second = ops::edit::SecondMoment(found->second.sum() + moment.sum(), found->second.count() + moment.count());
      }
    }
    if (step) RETURN_IF_ERROR(step(static_cast<int64_t>(end), total));
  }
  std::error_code error;
  std::filesystem::create_directories(std::filesystem::path(Path(0, source.sha256)).parent_path(), error);
  if (error) return absl::InternalError(absl::StrCat("cannot create the statistics directory: ", error.message()));
  for (auto& [layer, moment] : totals) {
    // Whole or absent (WriteSafetensors writes beside, fsyncs and renames over).
    RETURN_IF_ERROR(ops::edit::SaveSecondMoment(Path(layer, source.sha256), moment));
    statistics.covariances[layer] = moment.Mean().to(at::kDouble);
    statistics.keys[layer] = moment.count();
    statistics.computed.push_back(layer);
  }
  return statistics;
}

}  // namespace deltaserve::control
