#include "server/engine/intra_op_threads.h"

#include <algorithm>
#include <thread>

#include <ATen/Parallel.h>

#include "server/model/worker_team.h"

#ifdef DELTASERVE_HAVE_OPENMP
#include <omp.h>
#endif

namespace deltaserve::engine {

void SetIntraOpThreadsOfThisThread(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#ifdef DELTASERVE_HAVE_OPENMP
  at::get_num_threads();  // ATen's lazy per-thread set-up first, so it cannot undo the next line
  omp_set_num_threads(threads);
#endif
  model::SetWorkerTeamOfThisThread(threads);
}

int IntraOpThreadsOfThisThread() { return at::get_num_threads(); }

}  // namespace deltaserve::engine
