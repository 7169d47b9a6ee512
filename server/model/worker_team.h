// Intra-op parallelism for the CPU inference kernels: a team of worker threads that belongs to
// one calling thread (the engine's), spins between the hundreds of small parallel sections of a
// decode step, and parks when the thread goes idle.
//
// Why not libtorch's at::parallel_for (OpenMP): libgomp shortens its workers' spinning to ~1,000
// iterations as soon as a process's OpenMP threads outnumber its cores, which happens whenever a
// second thread (the engine's, besides the main thread that loaded the model) runs parallel
// code. Every parallel section then wakes its workers through the kernel: on the medium demo
// model a batch-1 forward pass took 3.3-3.9 ms on the main thread and 4.0-4.9 ms on another.
//
// ParallelFor splits [begin, end) into one contiguous range per team member (the calling thread
// takes the first), at least `grain` long, and returns when all are done. A thread without a
// team (SetWorkerTeamOfThisThread never called, or 1) uses at::parallel_for; calls made from
// inside a section run on the calling thread alone, and so do libtorch's and BLAS's OpenMP
// sections. The body must not throw.
#pragma once

#include <cstdint>
#include <functional>

namespace deltaserve::model {

// SetWorkerTeamOfThisThread gives the calling thread a team of `threads` members (itself and
// threads - 1 workers); 0 or 1 removes it. The team lives until the thread exits or the next call.
void SetWorkerTeamOfThisThread(int threads);

// ParkedWorkersOfThisThread: how many of the calling thread's workers have stopped spinning
// and sleep until the next section (0 without a team).
int ParkedWorkersOfThisThread();

void ParallelFor(int64_t begin, int64_t end, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& body);

}  // namespace deltaserve::model
