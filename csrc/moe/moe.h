// Host side of nvfp4_C::marlin_moe (W4A16 NVFP4 mixture of experts on Marlin-repacked expert stacks).
// docs/moe.md describes the pipeline; the Python op nvfp4::marlin_moe (nvfp4_compile/ops/marlin_moe.py)
// validates shapes and dtypes, this layer re-checks what the kernels rely on.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace nvfp4 {

// x [M, H] bf16/fp16; topk_ids [M, k] int32/int64; topk_weights [M, k] fp32 or x.dtype;
// w13_q int32 [E, H_pad/16, 2*N13_pad], w13_s uint8 [E, H_pad/16, N13_pad], w13_gs fp32 [E] (N13 = 2I gated,
// I otherwise); w2_q int32 [E, I_pad/16, 2*H_pad], w2_s uint8 [E, I_pad/16, H_pad], w2_gs fp32 [E];
// activation 0 = silu (gated, gate rows first), 1 = relu2 -> [M, H] x.dtype. tile: index into
// marlin_moe_tile_names() to force the grouped GEMM's tile (the tactic registry, ops/moe_tactics.py), -1 picks
// by routed rows per expert.
at::Tensor marlin_moe(const at::Tensor& x, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                      const at::Tensor& w13_q, const at::Tensor& w13_s, const at::Tensor& w13_gs,
                      const at::Tensor& w2_q, const at::Tensor& w2_s, const at::Tensor& w2_gs, int64_t activation,
                      int64_t inter_size, int64_t tile);

// ---- pieces (one translation unit each) ----------------------------------------------------------------

constexpr int kMoeMaxExperts = 1024;  // one alignment thread per expert
constexpr int kMoeMaxTopk = 64;

// Row-tile shapes of the grouped GEMM (gemm_launch.cuh configs). The alignment block equals the tile's rows,
// so every m-tile belongs to one expert.
enum class MoeTile : int { kM16 = 0, kM32 = 1, kM64 = 2, kLarge = 3 };
inline std::vector<std::string> marlin_moe_tile_names() { return {"m16", "m32", "m64", "large"}; }
MoeTile choose_moe_tile(int64_t num_ids, int64_t num_experts);
int moe_tile_rows(MoeTile tile);

// The routing of one call, produced on the GPU by launch_moe_align (no host sync: sized for the worst case).
struct MoeRouting {
  const int* sorted_ids;   // [max_tiles * rows] flat (token * k + slot) ids grouped by expert; pads = num_ids
  const int* tile_expert;  // [max_tiles] expert of each m-tile (entries past *num_padded / rows are unused)
  const int* num_padded;   // [1] rows of sorted_ids in use (a multiple of rows)
  int num_ids;             // M * k
  int num_experts;
  int max_tiles;           // worst-case m-tiles: min(M*k, (M*k + min(E, M*k) * (rows - 1)) / rows)
  int expected_tiles;      // host estimate of m-tiles holding tokens (split-K sizing only)
};

// Worst-case m-tile count for num_ids routed rows over num_experts with `rows`-row tiles.
int64_t moe_max_tiles(int64_t num_ids, int64_t num_experts, int rows);

// topk_ids [M, k] int32/int64 -> sorted_ids / tile_expert / num_padded (device buffers of the sizes above).
void launch_moe_align(const at::Tensor& topk_ids, int num_experts, int rows, int* sorted_ids, int* tile_expert,
                      int* num_padded, cudaStream_t stream);

// The same as a private op (tests): topk_ids [M, k] on a CUDA device -> (sorted_ids, tile_expert, num_padded)
// sized for the worst case.
std::tuple<at::Tensor, at::Tensor, at::Tensor> moe_align(const at::Tensor& topk_ids, int64_t num_experts,
                                                         int64_t rows);

// One grouped GEMM: C[id] = A[id / a_row_div] @ deq(B[e])^T * gs[e] for each routed row id of expert e.
struct MoeGemmArgs {
  const void* a;
  int64_t lda;
  int a_row_div;            // k for the first GEMM (A = x), 1 for the second (A = the activations)
  const int32_t* qweight;   // [E, k_pad/16, 2*n_pad]
  const uint8_t* scales;    // [E, k_pad/16, n_pad]
  const float* global_scale;  // [E]
  void* c;                  // [M*k, n], row stride ldc
  int64_t ldc;
  int n, k, n_pad, k_pad;
};
void launch_moe_gemm_bf16(MoeTile tile, const MoeGemmArgs& args, const MoeRouting& routing, int device);
void launch_moe_gemm_fp16(MoeTile tile, const MoeGemmArgs& args, const MoeRouting& routing, int device);

// h [M*k, 2I] (gated) or [M*k, I] -> act [M*k, I] in x.dtype: silu(gate) * up or relu(h)^2, FP32 math.
void launch_moe_activation(const at::Tensor& h, at::Tensor& act, bool gated, cudaStream_t stream);

// y [M*k, H] -> out [M, H] = sum over slots with an expert id in [0, E) of topk_weight * y, in FP32.
void launch_moe_reduce(const at::Tensor& y, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                       int num_experts, at::Tensor& out, cudaStream_t stream);

}  // namespace nvfp4
