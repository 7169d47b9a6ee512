// Converts exceptions thrown by libtorch (c10::Error and std::exception) into absl::Status at
// module boundaries, keeping the message.
//   absl::Status status = CatchTorchErrors("forward pass", [&] { model.Forward(batch); });
#pragma once

#include <exception>
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
  } catch (const std::exception& error) {
    // c10::Error derives from std::exception; what() includes a backtrace, keep the first line.
    std::string message = error.what();
    size_t newline = message.find('\n');
    if (newline != std::string::npos) message.resize(newline);
    return absl::InternalError(absl::StrCat(what, " failed: ", message));
  }
}

}  // namespace deltaserve::common
