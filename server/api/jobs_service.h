// JobsService: deltaserve.v1.Jobs over gRPC's callback API (WatchJob streams for as long as a
// job runs, which must not hold a thread). Thin: it converts protobuf to MergeJobs and
// JobRunner calls and back; every rule lives in control/. WatchJob writes the latest record
// from OnWriteDone (one write in flight; updates in between are coalesced, so a slow watcher
// sees fewer progress steps but always the final state) and ends OK after the job's terminal
// state. While the server drains, SubmitMerge answers UNAVAILABLE (a job started then would be
// interrupted), as do the other Submit calls. Callers see only their own jobs and
// submit only what Access allows; submissions and cancels are audited. Thread-safe; the
// runner, job kinds, metrics, state and gatekeeper must outlive it.
#pragma once

#include "deltaserve/v1/jobs.grpc.pb.h"
#include "server/api/access.h"
#include "server/api/serving_state.h"
#include "server/control/edit_jobs.h"
#include "server/control/finetune_jobs.h"
#include "server/control/job_runner.h"
#include "server/control/merge_jobs.h"
#include "server/control/unlearn_jobs.h"
#include "server/telemetry/server_metrics.h"

namespace deltaserve::api {

class JobsService final : public deltaserve::v1::Jobs::CallbackService {
 public:
  JobsService(control::JobRunner* runner, control::MergeJobs* merges, control::FinetuneJobs* finetunes,
              control::UnlearnJobs* unlearns, control::EditJobs* edits, telemetry::ServerMetrics* metrics,
              const ServingState* state, const Gatekeeper* gate);

  grpc::ServerUnaryReactor* SubmitMerge(grpc::CallbackServerContext* context,
                                        const deltaserve::v1::MergeRequest* request,
                                        deltaserve::v1::Job* response) override;
  grpc::ServerUnaryReactor* SubmitFinetune(grpc::CallbackServerContext* context,
                                           const deltaserve::v1::FinetuneRequest* request,
                                           deltaserve::v1::Job* response) override;
  grpc::ServerUnaryReactor* SubmitUnlearn(grpc::CallbackServerContext* context,
                                          const deltaserve::v1::UnlearnRequest* request,
                                          deltaserve::v1::Job* response) override;
  grpc::ServerUnaryReactor* SubmitEdit(grpc::CallbackServerContext* context,
                                       const deltaserve::v1::EditRequest* request,
                                       deltaserve::v1::Job* response) override;
  grpc::ServerUnaryReactor* SubmitStats(grpc::CallbackServerContext* context,
                                        const deltaserve::v1::StatsRequest* request,
                                        deltaserve::v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const deltaserve::v1::GetJobRequest* request,
                                   deltaserve::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const deltaserve::v1::ListJobsRequest* request,
                                     deltaserve::v1::ListJobsResponse* response) override;
  grpc::ServerWriteReactor<deltaserve::v1::Job>* WatchJob(grpc::CallbackServerContext* context,
                                                          const deltaserve::v1::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const deltaserve::v1::CancelJobRequest* request,
                                      deltaserve::v1::Job* response) override;

 private:
  // Finish records the RPC in the metrics and ends the unary call.
  grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* context, const char* method,
                                   const absl::Status& status);
  // FinishWithJob answers a call that returns a Job.
  grpc::ServerUnaryReactor* FinishWithJob(grpc::CallbackServerContext* context, const char* method,
                                          const absl::StatusOr<control::JobRecord>& job,
                                          deltaserve::v1::Job* response);
  // SubmitJob is every Submit* call: the caller admitted and allowed what the request names,
  // refused while draining, else the request's spec submitted to `kind` (MergeJobs,
  // FinetuneJobs, UnlearnJobs or EditJobs); audited.
  template <typename Request, typename Kind>
  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context, const char* method,
                                      const Request& request, Kind* kind, deltaserve::v1::Job* response);

  control::JobRunner* runner_;
  control::MergeJobs* merges_;
  control::FinetuneJobs* finetunes_;
  control::UnlearnJobs* unlearns_;
  control::EditJobs* edits_;
  // VisibleJob: the job with that id if the caller may see it (its output lies in the caller's
  // namespaces), NOT_FOUND otherwise.
  absl::StatusOr<control::JobRecord> VisibleJob(const Access& access, const std::string& id) const;

  telemetry::ServerMetrics* metrics_;
  const ServingState* state_;
  const Gatekeeper* gate_;
};

}  // namespace deltaserve::api
