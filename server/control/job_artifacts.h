// What the job kinds share at their two ends: reading a variant's adapter as input, and
// publishing a result as a new variant without ever leaving half of it behind.
//   ASSIGN_OR_RETURN(deltas::PeftAdapter input, ReadVariantForJob(*registry, "team/a"));
//   RETURN_IF_ERROR(PublishDeltas(*registry, context, "team/out", result, base, lineage));
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/control/job_runner.h"
#include "server/control/variant_registry.h"
#include "server/deltas/peft_adapter.h"

namespace deltaserve::control {

// CheckNewOutput: INVALID_ARGUMENT for a malformed name, ALREADY_EXISTS for a taken one.
absl::Status CheckNewOutput(const VariantRegistry& registry, const std::string& name);

// ReadVariantForJob reads a variant's adapter files again, in float32 into host memory (jobs
// compute on the host and leave the device to serving): NOT_FOUND when the variant no longer
// exists, FAILED_PRECONDITION when it cannot be served, the reader's error otherwise.
absl::StatusOr<deltas::PeftAdapter> ReadVariantForJob(const VariantRegistry& registry, const std::string& name);

// TextsSha256: the digest an evaluation report or lineage records instead of a set of texts
// (sha256 of the texts joined by newlines).
std::string TextsSha256(const std::vector<std::string>& texts);


// CheckTrainingParameters: INVALID_ARGUMENT naming the first of a training job's LoRA rank (1
// to 256), learning rate (0 to 1, open), batch size (1 to 1024) and micro-batch size (>= 0)
// that is out of range. Fine-tune and unlearn jobs check theirs alike.
absl::Status CheckTrainingParameters(int64_t rank, double learning_rate, int64_t batch_size,
                                     int64_t micro_batch_size);
// MicroBatchSize: the rows per forward pass for a batch (micro_batch_size 0 = the whole batch).
int64_t MicroBatchSize(int64_t batch_size, int64_t micro_batch_size);

// OutputPublished: the job's output variant exists and records the job as its maker (a job
// interrupted after publishing succeeded); JobKindHandlers::published for every kind.
bool OutputPublished(const VariantRegistry& registry, const JobRecord& record);

// A job's output that takes over an existing name (VariantRegistry::PublishReplacement).
struct Replacement {
  int64_t expected_version = 1;
  bool keep_previous = false;
};

// PublishDeltas writes `result` as a PEFT adapter (in the serving dtype, declaring
// `base_model`) into a staging directory, syncs it, takes the job's last cancellation point,
// and publishes it as `output` with `lineage` — as a new variant, or with `replace` as the next
// version of the existing `output`. On any failure the staged files are removed.
absl::Status PublishDeltas(VariantRegistry& registry, JobContext& context, const std::string& output,
                           const deltas::DeltaSet& result, const std::string& base_model,
                           const VariantLineage& lineage, const Replacement* replace = nullptr);

}  // namespace deltaserve::control
