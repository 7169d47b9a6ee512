#include "server/engine/choice_fan_in.h"

#include <algorithm>

namespace deltaserve::engine {
namespace {

// Severity: which outcome the request reports when its choices ended differently.
int Severity(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return 0;
    case FinishReason::kLength: return 1;
    case FinishReason::kDeadlineExceeded: return 2;
    case FinishReason::kCancelled: return 3;
    case FinishReason::kError: return 4;
  }
  return 4;
}

}  // namespace

class ChoiceFanIn::ChoiceSink : public RequestSink {
 public:
  ChoiceSink(std::shared_ptr<ChoiceFanIn> fan_in, int index) : fan_in_(std::move(fan_in)), index_(index) {}
  void OnOutput(GenerationOutput output) override { fan_in_->Output(index_, std::move(output)); }
  void OnFinished(RequestResult result) override { fan_in_->Finished(index_, std::move(result)); }

 private:
  std::shared_ptr<ChoiceFanIn> fan_in_;
  int index_;
};

std::shared_ptr<RequestSink> ChoiceFanIn::Choice(int index) {
  return std::make_shared<ChoiceSink>(shared_from_this(), index);
}

void ChoiceFanIn::Output(int index, GenerationOutput output) {
  absl::MutexLock lock(&mutex_);
  output.index = index;
  if (sink_ != nullptr) sink_->OnOutput(std::move(output));
}

void ChoiceFanIn::Finished(int index, RequestResult result) {
  absl::MutexLock lock(&mutex_);
  if (sink_ == nullptr) return;
  GenerationOutput last = std::move(result.final_output);
  last.index = index;
  last.choice_finished = result.reason;
  sink_->OnOutput(std::move(last));
  if (!any_) {
    combined_.reason = result.reason;
    combined_.status = result.status;
    combined_.usage = result.usage;
    any_ = true;
  } else {
    if (Severity(result.reason) > Severity(combined_.reason)) {
      combined_.reason = result.reason;
      combined_.status = result.status;
    }
    combined_.usage.completion_tokens += result.usage.completion_tokens;
    combined_.usage.cached_prompt_tokens = std::max(combined_.usage.cached_prompt_tokens, result.usage.cached_prompt_tokens);
    combined_.usage.time_to_first_token_seconds =
        std::min(combined_.usage.time_to_first_token_seconds, result.usage.time_to_first_token_seconds);
    combined_.usage.queue_time_seconds = std::min(combined_.usage.queue_time_seconds, result.usage.queue_time_seconds);
  }
  if (--left_ > 0) return;
  std::shared_ptr<RequestSink> sink = std::move(sink_);
  sink->OnFinished(std::move(combined_));
}

}  // namespace deltaserve::engine
