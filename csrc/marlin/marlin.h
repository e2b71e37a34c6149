// Host entry points of the Marlin kernels (registered as torch.ops.nvfp4_C.* by csrc/bindings.cpp).
// Inputs are validated by the Python ops (nvfp4_compile/ops/marlin.py); these re-check what the kernels
// rely on (device, dtype, contiguity, alignment) and raise instead of reading out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace nvfp4 {

// x [M, size_k] bf16/fp16 contiguous; qweight int32 [K_pad/16, 2*N_pad]; scales uint8 [K_pad/16, N_pad];
// global_scale fp32 [1] or [size_n] (decode; per column for merged siblings); bias [size_n] in x.dtype or none -> [M, size_n] x.dtype.
// config: index into marlin_gemm_config_names() to force a tile config (the tactic registry,
// nvfp4_compile/ops/gemm_tactics.py), optionally | kConfigFitClusters, or -1 to pick by M.
at::Tensor marlin_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                       const at::Tensor& global_scale, const std::optional<at::Tensor>& bias, int64_t size_n,
                       int64_t size_k, int64_t config = -1);

// Flag or-ed into a config >= 0: where a tile's K splits would add up through the FP32 workspace because their
// clusters do not all fit on the GPU at once, split K fewer ways, as many as fit in clusters (idle SMs against the
// workspace's traffic and serial fix-up: which wins depends on the shape, so gemm="auto" measures both).
constexpr int64_t kConfigFitClusters = 256;
inline int64_t marlin_gemm_fit_clusters_flag() { return kConfigFitClusters; }

// Names of the tile configs by index, in the order of gemm_launch.cuh's dispatch switch.
inline std::vector<std::string> marlin_gemm_config_names() {
  return {"m16", "m32", "m64", "large", "gemv8",
          "wg64x512", "wg64x256", "wg128x256", "wg256x128", "wg64x256w4", "wg128x256w4", "gemv16", "sw16x512",
          "gemv16b", "gemv8b", "wg128x128", "wg64x128"};
}

// Split-K of the dense GEMM on Hopper: true (default) puts the splits of a tile in one thread-block cluster
// and adds them through distributed shared memory; false uses the FP32 workspace and arrival counters (the
// path of other GPUs and of MoE). Same sums in the same order: bit-identical results (tests compare them).
// Returns the previous setting.
bool marlin_cluster_split_k(bool enable);
bool cluster_split_k_enabled();

// qweight/scales in the Marlin layout, global_scale fp32 [1] or [size_n] (per row) -> dense weight [size_n, size_k] in dtype
// (bf16/fp16): e2m1 * s_b * global_scale in FP32, rounded once, as formats.marlin.marlin_dequantize
// (dequant_weight.cu; the weight of the dequantize + cuBLAS GEMM tactic). An expert stack [E, ...] with
// global_scale [E] gives [E, size_n, size_k] (the MoE dequantize + grouped GEMM tactic).
at::Tensor marlin_dequantize(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& global_scale,
                             int64_t size_n, int64_t size_k, at::ScalarType dtype);

// w_fp4 uint8 [..., N, K/2], w_sf float8_e4m3fn [..., N, K/16] (no NaN: checked by the Python op)
// -> (qweight int32 [..., K_pad/16, 2*N_pad], scales uint8 [..., K_pad/16, N_pad]), byte-identical to
// nvfp4_compile.formats.marlin.marlin_repack_reference.
std::tuple<at::Tensor, at::Tensor> marlin_repack(const at::Tensor& w_fp4, const at::Tensor& w_sf);

// The per-dtype launchers (gemm_launch.cuh, instantiated in gemm_bf16.cu / gemm_fp16.cu).
void launch_marlin_gemm_bf16(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const at::Tensor& global_scale, const std::optional<at::Tensor>& bias,
                             at::Tensor& out, int64_t n_pad, int64_t k_pad, int config);
void launch_marlin_gemm_fp16(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const at::Tensor& global_scale, const std::optional<at::Tensor>& bias,
                             at::Tensor& out, int64_t n_pad, int64_t k_pad, int config);

}  // namespace nvfp4
