// Status propagation macros. Debian's Abseil (20220623) ships none, so the
// project defines them once here.
#ifndef PDSERVE_SHARED_STATUS_MACROS_H_
#define PDSERVE_SHARED_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define PDSERVE_CONCAT_INNER_(a, b) a##b
#define PDSERVE_CONCAT_(a, b) PDSERVE_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define PDSERVE_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status pdserve_status_ = (expr);           \
    if (!pdserve_status_.ok()) return pdserve_status_; \
  } while (0)

// `lhs = value of expr` for an absl::StatusOr<T> expression, or returns its
// status from the enclosing function. `lhs` may declare a variable
// (`PDSERVE_ASSIGN_OR_RETURN(auto x, F())`).
#define PDSERVE_ASSIGN_OR_RETURN(lhs, expr) \
  PDSERVE_ASSIGN_OR_RETURN_IMPL_(PDSERVE_CONCAT_(pdserve_statusor_, __LINE__), lhs, expr)

#define PDSERVE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // PDSERVE_SHARED_STATUS_MACROS_H_
