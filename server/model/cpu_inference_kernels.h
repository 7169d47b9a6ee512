// CPU float32 inference kernels for the forward pass: each does in one operator call, with
// plain loops over raw rows, what the generic path does in several libtorch operators. A batch-1
// decode step runs hundreds of operators on vectors of a few hundred floats, where libtorch's
// per-operator cost (dispatch, allocation, TensorIterator set-up) rivals the arithmetic.
//
// LlamaModel uses them only under c10::InferenceMode on CPU float32 tensors (Applies()); the
// generic operators stay the reference, the path for other devices and dtypes, and the path
// training differentiates through. Results equal the generic path's to float32 rounding.
// Pure functions of their arguments (the in-place ones write only what they are given).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace deltaserve::model::cpu_kernels {

// Applies: inference mode is on and every tensor is a float32 CPU tensor.
bool Applies(std::initializer_list<const at::Tensor*> tensors);

// RmsNorm returns x / sqrt(mean(x^2) + eps) * weight for x [rows, hidden] (rows contiguous).
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// RotateInPlace rotates the first `heads` heads of every row of x [tokens, >= heads * head_dim]
// (rows may be strided, elements contiguous) by cos/sin [tokens, head_dim / 2], in the "rotate
// half" layout.
void RotateInPlace(at::Tensor& x, int64_t heads, int64_t head_dim, const at::Tensor& cos, const at::Tensor& sin);

// Add returns x + y, a new contiguous [rows, width], for x and y [rows, width] (rows may be
// strided, elements contiguous).
at::Tensor Add(const at::Tensor& x, const at::Tensor& y);

// SiluTimes returns silu(gate) * up = gate / (1 + e^-gate) * up, a new contiguous [rows, width],
// for gate and up [rows, width] (rows may be strided, elements contiguous).
at::Tensor SiluTimes(const at::Tensor& gate, const at::Tensor& up);

}  // namespace deltaserve::model::cpu_kernels
