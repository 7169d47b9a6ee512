// WeightMatrix: one base weight matrix ([out, in]; for embeddings [vocab, hidden]) kept at its
// storage width, separate from the width the forward pass computes in.
//
// Widths: float32, bfloat16, float16, or int8 (weight-only, symmetric, one float32 scale per
// row: row o is values[o] * scales[o]). The CPU kernels (cpu_linear.h) read every
// width directly and widen in registers; everything else asks for Dense(), a widened copy.
// Values may be views into a read-only memory-mapped checkpoint: never write into them.
// Immutable value type; copies share the tensors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"

namespace deltaserve::model {

struct WeightMatrix {
  at::Tensor values;  // [rows, columns]: float32, bfloat16, float16 or int8 (kChar)
  at::Tensor scales;  // int8 only: [rows] float32; undefined for the floating widths

  bool defined() const { return values.defined(); }
  int64_t rows() const { return values.size(0); }
  int64_t columns() const { return values.size(1); }
  at::ScalarType width() const { return values.scalar_type(); }
  // Bytes held: values plus scales.
  int64_t nbytes() const;
  // Dense returns the matrix as `dtype` (values times scales for int8): the tensor itself when
  // it is already that width, else a new one.
  at::Tensor Dense(at::ScalarType dtype) const;
  // GatherRows returns rows `ids` (a long tensor) as a new [ids, columns] tensor of `dtype`.
  at::Tensor GatherRows(const at::Tensor& ids, at::ScalarType dtype) const;
};

// StoreAtWidth returns `dense` (any floating dtype) held at `width`: a conversion for the
// floating widths, QuantizeInt8 for kChar.
WeightMatrix StoreAtWidth(const at::Tensor& dense, at::ScalarType width);

// QuantizeInt8: symmetric per-row int8, scale = max |row| / 127 (rows of zeros get scale 1).
WeightMatrix QuantizeInt8(const at::Tensor& dense);

// ParseWeightDtype accepts auto (nullopt: keep the checkpoint's width), float32, bfloat16,
// float16, int8 and their short forms (fp32/f32, bf16, fp16/f16/half, i8).
absl::StatusOr<std::optional<at::ScalarType>> ParseWeightDtype(const std::string& text);

// WidthName: "float32", "bfloat16", "float16" or "int8".
std::string WidthName(at::ScalarType width);

}  // namespace deltaserve::model
