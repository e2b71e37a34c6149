// Host entry points of the Marlin kernels (registered as torch.ops.nvfp4_C.* by csrc/bindings.cpp).
// Inputs are validated by the Python ops (nvfp4_compile/ops/marlin.py); these re-check what the kernels
// rely on (device, dtype, contiguity, alignment) and raise instead of reading out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace nvfp4 {

// x [M, size_k] bf16/fp16 contiguous; qweight int32 [K_pad/16, 2*N_pad]; scales uint8 [K_pad/16, N_pad];
// global_scale fp32 [1] (decode); bias [size_n] in x.dtype or none -> [M, size_n] x.dtype.
at::Tensor marlin_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                       const at::Tensor& global_scale, const std::optional<at::Tensor>& bias, int64_t size_n,
                       int64_t size_k);

// w_fp4 uint8 [..., N, K/2], w_sf float8_e4m3fn [..., N, K/16] (no NaN: checked by the Python op)
// -> (qweight int32 [..., K_pad/16, 2*N_pad], scales uint8 [..., K_pad/16, N_pad]), byte-identical to
// nvfp4_compile.formats.marlin.marlin_repack_reference.
std::tuple<at::Tensor, at::Tensor> marlin_repack(const at::Tensor& w_fp4, const at::Tensor& w_sf);

// The per-dtype launchers (gemm_launch.cuh, instantiated in gemm_bf16.cu / gemm_fp16.cu).
void launch_marlin_gemm_bf16(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const at::Tensor& global_scale, const std::optional<at::Tensor>& bias,
                             at::Tensor& out, int64_t n_pad, int64_t k_pad);
void launch_marlin_gemm_fp16(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const at::Tensor& global_scale, const std::optional<at::Tensor>& bias,
                             at::Tensor& out, int64_t n_pad, int64_t k_pad);

}  // namespace nvfp4
