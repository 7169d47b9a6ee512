// ChoiceFanIn: the n sequences of one request (parallel sampling, SamplingOptions::n) report to
// the request's one RequestSink. Choice(i) is the sink of sequence i: its outputs reach the
// request's sink tagged with index i; its end becomes an output carrying choice_finished (and
// its last text); once every choice has ended, the request's sink hears OnFinished once, with
// usage summed over the choices (prompt tokens counted once) and the most severe outcome
// (an error, else a cancellation, else a deadline, else length if any choice hit it, else stop).
// Thread-safe.
#pragma once

#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/engine/request.h"

namespace deltaserve::engine {

class ChoiceFanIn : public std::enable_shared_from_this<ChoiceFanIn> {
 public:
  ChoiceFanIn(std::shared_ptr<RequestSink> sink, int choices) : sink_(std::move(sink)), left_(choices) {}
  std::shared_ptr<RequestSink> Choice(int index);

 private:
  class ChoiceSink;
  void Output(int index, GenerationOutput output);
  void Finished(int index, RequestResult result);

  absl::Mutex mutex_;
  std::shared_ptr<RequestSink> sink_ ABSL_GUARDED_BY(mutex_);
  int left_ ABSL_GUARDED_BY(mutex_);
  bool any_ ABSL_GUARDED_BY(mutex_) = false;
  RequestResult combined_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace deltaserve::engine
