#include "server/model/weight_matrix.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace deltaserve::model {

int64_t WeightMatrix::nbytes() const {
  return (values.defined() ? values.nbytes() : 0) + (scales.defined() ? scales.nbytes() : 0);
}

at::Tensor WeightMatrix::Dense(at::ScalarType dtype) const {
  if (!scales.defined()) return values.scalar_type() == dtype ? values : values.to(dtype);
  return (values.to(at::kFloat) * scales.unsqueeze(1)).to(dtype);
}

at::Tensor WeightMatrix::GatherRows(const at::Tensor& ids, at::ScalarType dtype) const {
  at::Tensor rows = at::embedding(values, ids);
  if (!scales.defined()) return rows.to(dtype);
  return (rows.to(at::kFloat) * scales.index_select(0, ids).unsqueeze(1)).to(dtype);
}

WeightMatrix QuantizeInt8(const at::Tensor& dense) {
  // Blocks of rows, so that the float temporaries of a large matrix (an LM head) stay small.
  constexpr int64_t kBlockRows = 1024;
  at::Tensor values = at::empty(dense.sizes(), dense.options().dtype(at::kChar));
  at::Tensor scales = at::empty({dense.size(0)}, dense.options().dtype(at::kFloat));
  for (int64_t begin = 0; begin < dense.size(0); begin += kBlockRows) {
    const int64_t rows = std::min(kBlockRows, dense.size(0) - begin);
    at::Tensor block = dense.narrow(0, begin, rows).to(at::kFloat);
    at::Tensor largest = block.abs().amax(1);
    at::Tensor block_scales = at::where(largest > 0, largest / 127.0, at::ones_like(largest));
    values.narrow(0, begin, rows).copy_(at::round(block / block_scales.unsqueeze(1)).clamp(-127, 127));
    scales.narrow(0, begin, rows).copy_(block_scales);
  }
  return WeightMatrix{values, scales};
}

WeightMatrix StoreAtWidth(const at::Tensor& dense, at::ScalarType width) {
  if (width == at::kChar) return QuantizeInt8(dense);
  return WeightMatrix{dense.to(width).contiguous(), at::Tensor()};
}

absl::StatusOr<std::optional<at::ScalarType>> ParseWeightDtype(const std::string& text) {
  if (text == "auto" || text.empty()) return std::optional<at::ScalarType>();
  if (text == "float32" || text == "fp32" || text == "f32") return std::optional(at::kFloat);
  if (text == "bfloat16" || text == "bf16") return std::optional(at::kBFloat16);
  if (text == "float16" || text == "fp16" || text == "f16" || text == "half") return std::optional(at::kHalf);
  if (text == "int8" || text == "i8") return std::optional(at::kChar);
  return absl::InvalidArgumentError(absl::StrCat(
      "--weight-dtype \"", text, "\" is not one of auto, float32, bfloat16, float16, int8"));
}

std::string WidthName(at::ScalarType width) {
  switch (width) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kChar: return "int8";
    default: return c10::toString(width);
  }
}

}  // namespace deltaserve::model
