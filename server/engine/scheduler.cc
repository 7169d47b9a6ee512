#include "server/engine/scheduler.h"

#include <algorithm>
#include <unordered_set>

namespace deltaserve::engine {

int64_t Schedule::TotalTokens() const {
  int64_t total = 0;
  for (const ScheduledSlice& slice : slices) total += slice.length;
  return total;
}

bool Scheduler::Reserve(RequestState* request, int64_t tokens) {
  const int64_t missing = allocator_->BlocksFor(tokens) - static_cast<int64_t>(request->kv_blocks.size());
  return missing <= 0 || allocator_->TryAppend(missing, request->kv_blocks);
}

void Scheduler::Preempt(RequestState* request) {
  allocator_->Release(request->kv_blocks);
  request->computed = 0;
  request->registered_blocks = 0;
  request->running = false;
  if (gate_ != nullptr) gate_->Release(request);
  running_.erase(std::find(running_.begin(), running_.end(), request));
  waiting_.push_front(request);
  ++preemptions_;
}

void Scheduler::Enqueue(RequestState* request) {
  const std::string& tenant = request->request.tenant;
  if (active_requests_[tenant]++ == 0) {
    // Newly active: lift to the smallest counter among the tenants with work.
    bool any = false;
    double lowest = 0;
    for (const auto& [other, count] : active_requests_) {
      if (other == tenant || count == 0) continue;
      const double value = counters_[other];
      lowest = any ? std::min(lowest, value) : value;
      any = true;
    }
    if (any) counters_[tenant] = std::max(counters_[tenant], lowest);
  }
  waiting_.push_back(request);
}

double Scheduler::counter(const std::string& tenant) const {
  auto it = counters_.find(tenant);
  return it == counters_.end() ? 0.0 : it->second;
}

void Scheduler::Charge(const RequestState* request, int64_t tokens) {
  const double weight = request->request.tenant_weight > 0 ? request->request.tenant_weight : 1.0;
  counters_[request->request.tenant] += static_cast<double>(tokens) / weight;
}

size_t Scheduler::NextCandidate(const std::vector<const RequestState*>& skipped) const {
  size_t best = waiting_.size();
  double best_counter = 0;
  // Requests of one tenant come in runs: look its counter up once per run.
  const std::string* tenant = nullptr;
  double value = 0;
  for (size_t i = 0; i < waiting_.size(); ++i) {
    if (std::find(skipped.begin(), skipped.end(), waiting_[i]) != skipped.end()) continue;
    if (tenant == nullptr || *tenant != waiting_[i]->request.tenant) {
      tenant = &waiting_[i]->request.tenant;
      value = counter(*tenant);
    }
    if (best == waiting_.size() || value < best_counter) {
      best = i;
      best_counter = value;
    }
  }
  return best;
}

bool Scheduler::AdmitForked(RequestState* request) {
  if (gate_ != nullptr && !gate_->Acquire(request)) return false;
  ++active_requests_[request->request.tenant];
  request->running = true;
  request->admission = next_admission_++;
  running_.push_back(request);
  return true;
}

std::vector<int32_t> Scheduler::CachedPrefix(const RequestState* request) const {
  // A score request needs every position's logits; a preempted one starts again from its prompt.
  if (request->request.kind == RequestKind::kScore || request->computed != 0) return {};
  const int64_t max_blocks = (static_cast<int64_t>(request->tokens.size()) - 1) / allocator_->block_tokens();
  return allocator_->Match(request->prefix_salt, request->prefix_keys, request->tokens.data(), max_blocks);
}

size_t Scheduler::PreferCachedPrefix(size_t oldest, const std::vector<const RequestState*>& skipped) {
  RequestState* first = waiting_[oldest];
  if (!allocator_->prefix_caching() || first->passed_over >= options_.max_passed_over) return oldest;
  const std::string& tenant = first->request.tenant;
  size_t best = oldest;
  size_t best_blocks = CachedPrefix(first).size();
  int looked = 0;
  for (size_t i = oldest + 1; i < waiting_.size() && looked < options_.prefix_lookahead; ++i) {
    const RequestState* request = waiting_[i];
    if (request->request.tenant != tenant) continue;
    if (std::find(skipped.begin(), skipped.end(), request) != skipped.end()) continue;
    ++looked;
    const size_t blocks = CachedPrefix(request).size();
    if (blocks > best_blocks) {
      best = i;
      best_blocks = blocks;
    }
  }
  if (best != oldest) ++first->passed_over;
  return best;
}

void Scheduler::Remove(RequestState* request) {
  allocator_->Release(request->kv_blocks);
  auto running = std::find(running_.begin(), running_.end(), request);
  if (running != running_.end()) {
    running_.erase(running);
    if (gate_ != nullptr) gate_->Release(request);
  }
  auto waiting = std::find(waiting_.begin(), waiting_.end(), request);
  if (waiting != waiting_.end()) waiting_.erase(waiting);
  if (running != running_.end() || waiting != waiting_.end()) --active_requests_[request->request.tenant];
  request->running = false;
}

Schedule Scheduler::Next() {
  Schedule schedule;
  int64_t budget = options_.max_batch_tokens;
  std::vector<RequestState*> scheduled;
  const int64_t preemptions_before = preemptions_;

  // 1. Decoding requests: one token each, oldest first; preempt the youngest for blocks.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    RequestState* request = running_[i];
    if (request->PendingTokens() != 1) {
      ++i;
      continue;
    }
    bool reserved = Reserve(request, request->computed + 1);
    while (!reserved) {
      RequestState* victim = running_.back();
      if (victim == request) break;
      if (std::find(scheduled.begin(), scheduled.end(), victim) != scheduled.end()) break;
      Preempt(victim);
      reserved = Reserve(request, request->computed + 1);
    }
    if (!reserved) {
      if (running_.size() == 1) {
        schedule.out_of_memory.push_back(request);
        ++i;
      } else {
        Preempt(request);  // the youngest itself: wait and recompute later
      }
      continue;
    }
    schedule.slices.push_back({request, request->computed, 1});
    scheduled.push_back(request);
    Charge(request, 1);
    --budget;
    ++i;
  }

  // Prompt chunks share what is left with the decodes' latency: at most prefill_cap_ when the
  // step decodes.
  schedule.decode_tokens = static_cast<int64_t>(schedule.slices.size());
  int64_t prefill_left = schedule.decode_tokens > 0 ? std::min(budget, prefill_cap_) : budget;

  // 2. Running requests still prefilling: chunks under the remaining budget and free blocks.
  for (RequestState* request : running_) {
    if (prefill_left <= 0) break;
    if (request->PendingTokens() <= 1) continue;
    int64_t length = std::min(request->PendingTokens(), prefill_left);
    while (length > 0 && !Reserve(request, request->computed + length)) {
      // Shrink to what the free blocks allow.
      int64_t capacity =
          (static_cast<int64_t>(request->kv_blocks.size()) + allocator_->AvailableBlocks()) * allocator_->block_tokens();
      length = std::min(length - 1, capacity - request->computed);
    }
    if (length <= 0) continue;
    schedule.slices.push_back({request, request->computed, length});
    Charge(request, length);
    budget -= length;
    prefill_left -= length;
  }

  // 3. Admit waiting requests while there is room, the smallest tenant counter first (oldest
  // first within a tenant), skipping those whose variant is not ready; not in a step that had
  // to preempt (the freed blocks would only be fought over again).
  if (gate_ != nullptr) gate_->StartAdmission();
  std::vector<const RequestState*> skipped;  // not ready this step
  // Prompt blocks running requests will register in the prefix cache.
  std::unordered_set<uint64_t> pending_keys;
  if (options_.prefix_grouping && allocator_->prefix_caching()) {
    for (const RequestState* request : running_) {
      pending_keys.insert(request->prefix_keys.begin() + request->registered_blocks, request->prefix_keys.end());
    }
  }
  while (preemptions_ == preemptions_before && prefill_left > 0 &&
         static_cast<int64_t>(running_.size()) < options_.max_running_requests) {
    // Only when there is room is the queue scanned for the next candidate.
    size_t next = NextCandidate(skipped);
    if (next == waiting_.size()) break;
    if (options_.prefix_grouping) next = PreferCachedPrefix(next, skipped);
    RequestState* request = waiting_[next];
    std::vector<int32_t> hit = CachedPrefix(request);
    // Its next block is being computed by a running prompt: wait and share it.
    if (options_.prefix_grouping && hit.size() < request->prefix_keys.size() &&
        pending_keys.count(request->prefix_keys[hit.size()]) > 0) {
      skipped.push_back(request);
      continue;
    }
    const int64_t hit_tokens = static_cast<int64_t>(hit.size()) * allocator_->block_tokens();
    int64_t length = std::min(request->PendingTokens() - hit_tokens, prefill_left);
    int64_t capacity = (allocator_->AvailableBlocks() - allocator_->Unreferenced(hit)) * allocator_->block_tokens();
    length = std::min(length, capacity);
    if (length <= 0) {
      if (running_.empty()) {
        // Nothing will ever free blocks for it.
        waiting_.erase(waiting_.begin() + next);
        --active_requests_[request->request.tenant];
        schedule.out_of_memory.push_back(request);
        continue;
      }
      break;
    }
    if (gate_ != nullptr && !gate_->Acquire(request)) {
      skipped.push_back(request);
      continue;
    }
    allocator_->Share(hit, request->kv_blocks);
    request->computed = hit_tokens;
    request->registered_blocks = static_cast<int64_t>(hit.size());
    request->cached_tokens = hit_tokens;
    Reserve(request, request->computed + length);
    waiting_.erase(waiting_.begin() + next);
    request->running = true;
    request->admission = next_admission_++;
    running_.push_back(request);
    schedule.slices.push_back({request, request->computed, length});
    Charge(request, length);
    budget -= length;
    prefill_left -= length;
    if (options_.prefix_grouping) {
      pending_keys.insert(request->prefix_keys.begin() + request->registered_blocks, request->prefix_keys.end());
    }
  }
  schedule.prefill_tokens = schedule.TotalTokens() - schedule.decode_tokens;

  // Prefilling requests can together hold every block while none can finish: free the
  // youngest so the others progress (or give up on a request that cannot fit even alone).
  if (schedule.slices.empty() && schedule.out_of_memory.empty() && !running_.empty()) {
    if (running_.size() == 1) {
      schedule.out_of_memory.push_back(running_.front());
    } else {
      Preempt(running_.back());
    }
  }
  return schedule;
}

}  // namespace deltaserve::engine
