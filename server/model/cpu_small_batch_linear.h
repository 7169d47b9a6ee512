// y = x W^T + b on the CPU in float32 for steps of a few rows (decode steps of a few
// sequences), reading the weight matrix from memory once per call.
//
// Why: a decode step is bound by streaming the weights. OpenBLAS's GEMV streams them once per
// row, so R rows cost R passes over memory; its GEMM packs the whole weight matrix on every call,
// which for few rows costs more than the arithmetic. This kernel walks blocks of 4 weight rows,
// each loaded once into cache and multiplied with up to 4 input rows at a time in registers
// (cpu_lanes.h), or for a single row streams the weights in one prefetched sequence; the output
// features are split over the calling thread's worker team (worker_team.h).
//
// LlamaModel uses it for steps up to a number of rows measured there (llama_model.cc), and
// at::linear beyond. Results equal at::linear's to float32 rounding (sums in another order).
// Pure function of its arguments.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace deltaserve::model::cpu_kernels {

// SmallBatchLinear returns x W^T + bias as a new [rows, out] float32 tensor: x [rows, in] with
// contiguous rows (any row stride), weight [out, in] contiguous, bias [out] or undefined, all
// float32 on the CPU.
at::Tensor SmallBatchLinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace deltaserve::model::cpu_kernels
