#include "server/common/memory_reuse.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace deltaserve::common {

void ReuseFreedMemory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest; also stops its dynamic threshold
  mallopt(M_TRIM_THRESHOLD, 1 << 30);    // never trim the heap's top in practice
#endif
}

}  // namespace deltaserve::common
