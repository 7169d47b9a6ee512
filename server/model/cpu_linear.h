// y = x W^T + b on the CPU in float32 for any number of rows, reading the weight matrix at its
// storage width (float32, bfloat16, float16, or int8 with per-row scales; weight_matrix.h),
// widened in registers or while packing.
//
// Why not libtorch: a decode step is bound by streaming the weights. OpenBLAS's GEMV streams
// them once per row, so R rows cost R passes over memory; its GEMM packs the whole weight matrix
// on every call, which for few rows costs more than the arithmetic; narrow weights would need a
// widened copy first; and for prompt chunks Debian's OpenBLAS GEMM reached about 42 GFLOP/s on
// 2 AVX-512 cores. So for few rows this kernel walks blocks of 4 weight rows, each loaded once
// into cache and multiplied with up to 4 input rows at a time in registers, or for a single row
// streams the weights in one prefetched sequence; from kGemmMinRows rows (cpu_linear_isa.h) it
// is a packed GEMM with outer-product register tiles (126 GFLOP/s on one core for 512 rows).
// The output features are split over the calling thread's worker team (worker_team.h). The
// instruction set (AVX-512, AVX2 with F16C, or baseline) is chosen when the program loads.
//
// LlamaModel uses it for every float32 CPU product under inference mode (llama_model.cc), and
// at::linear over a widened copy elsewhere. Results equal a float32 product over the widened
// weights to float32 rounding (sums in another order). Pure function of its arguments.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "server/model/cpu_linear_isa.h"
#include "server/model/weight_matrix.h"

namespace deltaserve::model::cpu_kernels {

// CpuLinearInto writes x W^T + bias into y: x [rows, in] float32 with contiguous rows
// (any row stride), weight [out, in] at any width (values contiguous), bias [out] float32 or
// undefined, y [rows, out] float32 with contiguous rows (any row stride: it may be a column
// range of a wider tensor). All on the CPU.
void CpuLinearInto(const at::Tensor& x, const WeightMatrix& weight, const at::Tensor& bias, at::Tensor& y);

// CpuLinear returns x W^T + bias as a new [rows, out] float32 tensor.
at::Tensor CpuLinear(const at::Tensor& x, const WeightMatrix& weight, const at::Tensor& bias);

// How the product is computed: register tiles or the packed GEMM chosen by the number of rows
// (kGemmMinRows), or one of them whatever the rows (tests cover each on every shape).
enum class LinearMethod { kByRows, kRegisterTiles, kPackedGemm };

// The same with an explicit instruction set and method (tests compare every set the CPU supports).
void CpuLinearInto(const LinearKernelSet& kernels, LinearMethod method, const at::Tensor& x,
                   const WeightMatrix& weight, const at::Tensor& bias, at::Tensor& y);

// The set chosen for this CPU when the program loaded.
const LinearKernelSet& SelectedLinearKernels();

}  // namespace deltaserve::model::cpu_kernels
