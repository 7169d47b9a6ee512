// y = x W^T + b on the CPU in float32 for steps of a few rows (decode steps of a few
// sequences), reading the weight matrix from memory once per call, at its storage width
// (float32, bfloat16, float16, or int8 with per-row scales; weight_matrix.h), widened in
// registers.
//
// Why: a decode step is bound by streaming the weights. OpenBLAS's GEMV streams them once per
// row, so R rows cost R passes over memory; its GEMM packs the whole weight matrix on every call,
// which for few rows costs more than the arithmetic; and narrow weights would need a widened copy
// first. This kernel walks blocks of 4 weight rows, each loaded once into cache and multiplied
// with up to 4 input rows at a time in registers, or for a single row streams the weights in one
// prefetched sequence; the output features are split over the calling thread's worker team
// (worker_team.h). The instruction set (AVX-512, AVX2 with F16C, or baseline) is chosen when the
// program loads (cpu_linear_isa.h).
//
// LlamaModel uses it for steps up to a number of rows measured there (llama_model.cc), and
// at::linear over a widened copy beyond. Results equal a float32 product over the widened weights
// to float32 rounding (sums in another order). Pure function of its arguments.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "server/model/cpu_linear_isa.h"
#include "server/model/weight_matrix.h"

namespace deltaserve::model::cpu_kernels {

// SmallBatchLinearInto writes x W^T + bias into y: x [rows, in] float32 with contiguous rows
// (any row stride), weight [out, in] at any width (values contiguous), bias [out] float32 or
// undefined, y [rows, out] float32 with contiguous rows (any row stride: it may be a column
// range of a wider tensor). All on the CPU.
void SmallBatchLinearInto(const at::Tensor& x, const WeightMatrix& weight, const at::Tensor& bias,
                          at::Tensor& y);

// SmallBatchLinear returns x W^T + bias as a new [rows, out] float32 tensor.
at::Tensor SmallBatchLinear(const at::Tensor& x, const WeightMatrix& weight, const at::Tensor& bias);

// The same with an explicit instruction set (tests compare every set the CPU supports).
void SmallBatchLinearInto(const LinearKernelSet& kernels, const at::Tensor& x,
                          const WeightMatrix& weight, const at::Tensor& bias, at::Tensor& y);

// The set chosen for this CPU when the program loaded.
const LinearKernelSet& SelectedLinearKernels();

}  // namespace deltaserve::model::cpu_kernels
