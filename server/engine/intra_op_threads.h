// Intra-op CPU threads of the calling thread. libtorch's CPU operators and OpenBLAS read the
// calling thread's OpenMP setting at every call, so a thread can choose its own count without
// touching other threads (unlike at::set_num_threads, whose global value threads that start later
// inherit). Without OpenMP these do nothing and report 1.
//
// Why the engine sets its own: libtorch's default can be far below the machine's cores (on this
// project's 2-core machine it picks 1), and batch decode is bound by reading the weights, which
// two cores do at 36 GB/s against one core's 30 (medium demo model: 4.7 vs 7.2 ms per token of
// weight products, bench/forward_profile.cc).
//
// The count also sizes the thread's worker team (model/worker_team.h), which the CPU inference
// kernels use instead of OpenMP.
#pragma once

namespace deltaserve::engine {

// SetIntraOpThreadsOfThisThread sets the calling thread's count; 0 means one per CPU core.
void SetIntraOpThreadsOfThisThread(int threads);
// IntraOpThreadsOfThisThread returns the calling thread's count.
int IntraOpThreadsOfThisThread();

}  // namespace deltaserve::engine
