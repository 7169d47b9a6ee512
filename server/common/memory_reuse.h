// ReuseFreedMemory: keeps the C library's allocator from handing memory back to the kernel
// after every decode step. By default glibc serves large blocks (a step's activations, logits,
// gathered KV) with fresh mmaps and unmaps them when freed, so each step faults its pages in
// again: 95,000-108,000 minor page faults for each run of 64 streams x 128 tokens on the medium
// demo model; with this, 2,900 by the third run, once the heap has grown to the steps' peak.
// Blocks up to 32 MiB then come from the heap, and freed heap memory stays mapped (the process
// keeps its peak heap). Call once, first thing in main(), in processes that serve.
#pragma once

namespace deltaserve::common {

void ReuseFreedMemory();

}  // namespace deltaserve::common
