#include "server/ops/edit/second_moment.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace deltaserve::ops::edit {

SecondMoment::SecondMoment(int64_t dimension) : sum_(at::zeros({dimension, dimension}, at::kFloat)) {}

SecondMoment::SecondMoment(at::Tensor sum, int64_t count) : sum_(sum.to(at::kFloat)), count_(count) {}

absl::Status SecondMoment::Add(const at::Tensor& keys) {
  if (keys.dim() != 2 || keys.size(1) != dimension()) {
    std::string shape;
    for (int64_t size : keys.sizes()) absl::StrAppend(&shape, shape.empty() ? "" : ", ", size);
    return absl::InvalidArgumentError(absl::StrCat("keys must be [n, ", dimension(), "], not [", shape, "]"));
  }
  const at::Tensor batch = keys.to(sum_.device(), at::kFloat);
  sum_.addmm_(batch.t(), batch);
  count_ += keys.size(0);
  return absl::OkStatus();
}

at::Tensor SecondMoment::Mean() const { return count_ == 0 ? sum_.clone() : sum_ / static_cast<double>(count_); }

}  // namespace deltaserve::ops::edit
