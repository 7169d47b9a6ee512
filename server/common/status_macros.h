// Status propagation helpers used across deltaserve.
//
// RETURN_IF_ERROR(expr): returns expr's status from the enclosing function when it is not OK.
// ASSIGN_OR_RETURN(lhs, expr): evaluates a StatusOr; on error returns its status, else assigns.
//   ASSIGN_OR_RETURN(auto config, ModelConfig::FromFile(path));
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DS_CONCAT_INNER(a, b) a##b
#define DS_CONCAT(a, b) DS_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::absl::Status ds_status_ = (expr);      \
    if (!ds_status_.ok()) return ds_status_; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  DS_ASSIGN_OR_RETURN_IMPL(DS_CONCAT(ds_statusor_, __LINE__), lhs, expr)

#define DS_ASSIGN_OR_RETURN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                             \
  if (!statusor.ok()) return statusor.status();       \
  lhs = std::move(statusor).value()
