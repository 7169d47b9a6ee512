// Converts exceptions thrown by libtorch (c10::Error and std::exception) into absl::Status at
// module boundaries, keeping the message: RESOURCE_EXHAUSTED when memory ran out (a failed
// allocation on the host or the device), INTERNAL otherwise.
//   absl::Status status = CatchTorchErrors("forward pass", [&] { model.Forward(batch); });
#pragma once

#include <exception>
#include <new>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::common {

template <typename Function>
absl::Status CatchTorchErrors(const std::string& what, Function&& function) {
  try {
    std::forward<Function>(function)();
    return absl::OkStatus();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, " failed: out of memory"));
  } catch (const std::exception& error) {
    // c10::Error derives from std::exception; what() includes a backtrace, keep the first line.
    std::string message = error.what();
    size_t newline = message.find('\n');
    if (newline != std::string::npos) message.resize(newline);
    // libtorch's allocators say "out of memory" (CUDA) or "not enough memory" (CPU).
    const bool out_of_memory = message.find("out of memory") != std::string::npos ||
                               message.find("not enough memory") != std::string::npos;
    return absl::Status(out_of_memory ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kInternal,
                        absl::StrCat(what, " failed: ", message));
  }
}

}  // namespace deltaserve::common
