// PageSize: the page size a List RPC serves for the request's page_size field: 0 means 100;
// INVALID_ARGUMENT outside [0, 1000]. Shared by every List RPC so they agree.
//   ASSIGN_OR_RETURN(size_t page_size, PageSize(request->page_size()));
#pragma once

#include <cstddef>
#include <cstdint>

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

}  // namespace deltaserve::api
