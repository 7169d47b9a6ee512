// JobKind and JobState: what a job does and where it stands, as the server carries them. Their
// names ("MERGE", "QUEUED", ...) appear only where a job leaves the server: the catalog's SQLite
// rows, the proto enums (api/jobs_service), logs and metric labels.
//   JobRecord record;  record.kind = JobKind::kEdit;  record.state = JobState::kQueued;
//   store row: JobKindName(record.kind) == "EDIT";  ParseJobState("FAILED") == JobState::kFailed
#pragma once

#include <optional>
#include <ostream>
#include <string_view>

namespace deltaserve::control {

enum class JobKind { kMerge, kFinetune, kUnlearn, kEdit, kStats };
enum class JobState { kQueued, kRunning, kSucceeded, kFailed, kCancelled };

inline constexpr JobKind kAllJobKinds[] = {JobKind::kMerge, JobKind::kFinetune, JobKind::kUnlearn, JobKind::kEdit,
                                           JobKind::kStats};
inline constexpr JobState kAllJobStates[] = {JobState::kQueued, JobState::kRunning, JobState::kSucceeded,
                                             JobState::kFailed, JobState::kCancelled};

// The names stored in the catalog: "MERGE", "FINETUNE", "UNLEARN", "EDIT", "STATS".
constexpr const char* JobKindName(JobKind kind) {
  switch (kind) {
    case JobKind::kMerge: return "MERGE";
    case JobKind::kFinetune: return "FINETUNE";
    case JobKind::kUnlearn: return "UNLEARN";
    case JobKind::kEdit: return "EDIT";
    case JobKind::kStats: return "STATS";
  }
  return "UNKNOWN";
}

// The names stored in the catalog: "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED".
constexpr const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued: return "QUEUED";
    case JobState::kRunning: return "RUNNING";
    case JobState::kSucceeded: return "SUCCEEDED";
    case JobState::kFailed: return "FAILED";
    case JobState::kCancelled: return "CANCELLED";
  }
  return "UNKNOWN";
}

// Parse*: the value of a stored name; nullopt for any other text.
inline std::optional<JobKind> ParseJobKind(std::string_view name) {
  for (JobKind kind : kAllJobKinds) {
    if (name == JobKindName(kind)) return kind;
  }
  return std::nullopt;
}

inline std::optional<JobState> ParseJobState(std::string_view name) {
  for (JobState state : kAllJobStates) {
    if (name == JobStateName(state)) return state;
  }
  return std::nullopt;
}

// IsTerminal: SUCCEEDED, FAILED or CANCELLED; a job in one never changes again.
constexpr bool IsTerminal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed || state == JobState::kCancelled;
}

// For logs and test failure messages.
inline std::ostream& operator<<(std::ostream& out, JobKind kind) { return out << JobKindName(kind); }
inline std::ostream& operator<<(std::ostream& out, JobState state) { return out << JobStateName(state); }

}  // namespace deltaserve::control
