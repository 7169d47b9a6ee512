// SecondMoment: the uncentered second moment C = E[k k^T] of a layer's down-projection inputs
// (the "keys" of ROME, MEMIT and AlphaEdit), accumulated in streaming fashion: each batch of
// keys adds k^T k to a float32 [d, d] sum, so no more than one batch of keys is ever held.
// Thread-compatible.
//   SecondMoment moment(config.intermediate_size);
//   RETURN_IF_ERROR(moment.Add(keys));   // [n, d], any float dtype, any device
//   at::Tensor c = moment.Mean();          // [d, d] float32
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "absl/status/status.h"

namespace deltaserve::ops::edit {

class SecondMoment {
 public:
  explicit SecondMoment(int64_t dimension);
  // From a stored sum (a cache): `sum` [d, d] over `count` keys.
  SecondMoment(at::Tensor sum, int64_t count);

  // Add: INVALID_ARGUMENT unless `keys` is [n, dimension].
  absl::Status Add(const at::Tensor& keys);
  // Mean: sum / count, float32 (zeros while no key was added).
  at::Tensor Mean() const;

  int64_t dimension() const { return sum_.size(0); }
  int64_t count() const { return count_; }
  const at::Tensor& sum() const { return sum_; }

 private:
  at::Tensor sum_;  // float32 [d, d]
  int64_t count_ = 0;
};

}  // namespace deltaserve::ops::edit
