#include "server/control/job_artifacts.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "server/common/file_util.h"
#include "server/common/sha256.h"
#include "server/common/status_macros.h"

namespace deltaserve::control {
namespace {

// How long a replacing job waits for requests on the old version before leaving its files to
// the next start-up.
constexpr absl::Duration kRetireDeadline = absl::Minutes(10);

}  // namespace

absl::Status CheckNewOutput(const VariantRegistry& registry, const std::string& name) {
  RETURN_IF_ERROR(VariantCatalog::ValidateName(name));
  if (registry.Find(name) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("variant \"", name, "\" already exists; choose another output name"));
  }
  return absl::OkStatus();
}

absl::StatusOr<deltas::PeftAdapter> ReadVariantForJob(const VariantRegistry& registry, const std::string& name) {
  std::shared_ptr<const Variant> variant = registry.Find(name);
  if (variant == nullptr) return absl::NotFoundError(absl::StrCat("variant \"", name, "\" no longer exists"));
  RETURN_IF_ERROR(CheckServable(*variant));
  absl::StatusOr<deltas::PeftAdapter> adapter =
      deltas::ReadPeftAdapter(variant->path, registry.model().config(), at::kFloat, at::kCPU);
  if (!adapter.ok()) {
    return absl::Status(adapter.status().code(),
                        absl::StrCat("variant \"", name, "\" could not be read: ", adapter.status().message()));
  }
  return adapter;
}

std::string TextsSha256(const std::vector<std::string>& texts) {
  return common::Sha256Hex(absl::StrJoin(texts, "\n"));
}

absl::Status CheckTrainingParameters(int64_t rank, double learning_rate, int64_t batch_size,
                                     int64_t micro_batch_size) {
  if (rank < 1 || rank > 256) return absl::InvalidArgumentError(absl::StrCat("rank must be 1 to 256, got ", rank));
  if (!(learning_rate > 0 && learning_rate < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("learning_rate must be in (0, 1), got ", learning_rate));
  }
  if (batch_size < 1 || batch_size > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size must be 1 to 1024, got ", batch_size));
  }
  if (micro_batch_size < 0) return absl::InvalidArgumentError("micro_batch_size must not be negative");
  return absl::OkStatus();
}

int64_t MicroBatchSize(int64_t batch_size, int64_t micro_batch_size) {
  return micro_batch_size > 0 ? std::min(micro_batch_size, batch_size) : batch_size;
}

bool OutputPublished(const VariantRegistry& registry, const JobRecord& record) {
  std::shared_ptr<const Variant> output = registry.Find(record.output_variant);
  return output != nullptr && output->lineage.job_id == JobId(record.number);
}

absl::Status PublishDeltas(VariantRegistry& registry, JobContext& context, const std::string& output,
                           const deltas::DeltaSet& result, const std::string& base_model,
                           const VariantLineage& lineage, const Replacement* replace) {
  // A result with non-finite values or an absurd scale would serve NaN: refused, as uploads are.
  if (absl::Status finite = deltas::CheckFactors(result); !finite.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("the job's result is not servable, so nothing was published: ",
                                                      finite.message()));
  }
  ASSIGN_OR_RETURN(std::string staged, registry.MakeStagingDirectory(JobId(context.record().number) + "-"));
  auto discard = [&](absl::Status status) {
    common::RemoveRecursively(staged).IgnoreError();
    return status;
  };
  deltas::PeftAdapterConfig config;
  config.r = std::max<int64_t>(result.MaxRank(), 1);
  config.lora_alpha = static_cast<double>(config.r);
  config.base_model_name_or_path = base_model;
  absl::Status written =
      deltas::WritePeftAdapter(staged, config, result.To(at::kCPU, registry.model().dtype()));
  if (written.ok()) written = common::SyncPath(staged);
  if (!written.ok()) return discard(written);
  // The last point where a cancel takes effect: after Publish the variant exists.
  absl::Status step = context.Step(0.99, "publishing the new variant");
  if (!step.ok()) return discard(step);
  absl::StatusOr<VariantStatus> published =
      replace == nullptr ? registry.Publish(output, staged, lineage)
                         : registry.PublishReplacement(output, staged, lineage, replace->expected_version,
                                                       replace->keep_previous, registry.clock().Now() + kRetireDeadline);
  if (!published.ok()) return discard(published.status());
  return absl::OkStatus();
}

}  // namespace deltaserve::control
