// What every List RPC shares so that they agree:
//   - PageSize: the page size for the request's page_size field: 0 means 100; INVALID_ARGUMENT
//     outside [0, 1000].
//   - VisiblePage: up to `want` items past the cursor `after` that the caller may see, fetching
//     more from an ordered source (names for variants and datasets, job numbers for jobs) as
//     filtered-out items leave gaps.
//   ASSIGN_OR_RETURN(size_t page_size, PageSize(request->page_size()));
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::api {

inline absl::StatusOr<size_t> PageSize(int32_t requested) {
  constexpr int32_t kDefault = 100, kMax = 1000;
  if (requested < 0 || requested > kMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", requested, " is outside [0, ", kMax, "] (0 means ", kDefault, ")"));
  }
  return requested == 0 ? kDefault : requested;
}

// fetch(after, limit) returns up to `limit` items past the cursor `after`, in cursor order;
// cursor(item) is an item's cursor; keep(item) whether the caller may see it.
template <typename T, typename Cursor, typename Fetch, typename CursorOf, typename Keep>
absl::StatusOr<std::vector<T>> VisiblePage(const Fetch& fetch, const CursorOf& cursor, const Keep& keep, Cursor after,
                                           size_t want) {
  std::vector<T> page;
  while (page.size() < want) {
    absl::StatusOr<std::vector<T>> batch = fetch(after, want);
    if (!batch.ok()) return batch.status();
    for (T& item : *batch) {
      after = cursor(item);
      if (keep(item)) page.push_back(std::move(item));
      if (page.size() == want) break;
    }
    if (batch->size() < want) break;
  }
  return page;
}

}  // namespace deltaserve::api
