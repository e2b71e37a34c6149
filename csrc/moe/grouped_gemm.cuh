// Launch of the grouped (MoE) W4A16 GEMM: the dense Marlin kernel (marlin/gemm_kernel.cuh) instantiated with
// kMoe = true, one m-tile per `rows` block of the aligned routing, B / scales / global scale of the tile's
// expert, A rows gathered and C rows scattered through sorted_ids (the tile loop is the dense one).
//
// Grid = (n tiles, worst-case m tiles, splits): the routing lives on the GPU, so the grid cannot depend on it
// (CUDA-graph safety); m-tiles past the routed rows exit before loading anything. Split-K is sized from a host
// estimate of the tiles that hold tokens, and its workspace from the worst case.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <array>

#include "marlin/gemm_launch.cuh"
#include "moe/moe.h"

namespace nvfp4 {

template <typename T, class Cfg>
void launch_moe_gemm_config(const MoeGemmArgs& args, const MoeRouting& routing, int device) {
  MarlinGemmParams p{};
  p.a = args.a;
  p.lda = args.lda;
  p.b = reinterpret_cast<const int4*>(args.qweight);
  p.s = args.scales;
  p.global_scale = args.global_scale;
  p.c = args.c;
  p.ldc = args.ldc;
  p.n = args.n;
  p.k = args.k;
  p.n_pad = args.n_pad;
  p.k_pad = args.k_pad;
  p.m_tiles = routing.max_tiles;
  p.m = routing.max_tiles * Cfg::ROWS;  // every launched tile is full height; padding rows are masked by id
  p.n_tiles = (p.n_pad + Cfg::TN - 1) / Cfg::TN;
  p.k_tiles = (p.k_pad + Cfg::TK - 1) / Cfg::TK;
  p.moe.sorted_ids = routing.sorted_ids;
  p.moe.tile_expert = routing.tile_expert;
  p.moe.num_padded = routing.num_padded;
  p.moe.num_ids = routing.num_ids;
  p.moe.a_row_div = args.a_row_div;
  p.moe.b_stride = static_cast<int64_t>(args.k_pad / 16) * (2 * args.n_pad) / 4;  // int4 per expert
  p.moe.s_stride = static_cast<int64_t>(args.k_pad / 16) * args.n_pad;
  TORCH_CHECK(p.m_tiles <= 65535, "nvfp4_C::marlin_moe: too many routed rows for one launch");

  const int occupancy = configured_occupancy<T, Cfg, /*kMoe=*/true>(device);
  const int64_t slots = static_cast<int64_t>(sm_count(device)) * occupancy;
  const int64_t busy_tiles = static_cast<int64_t>(std::max(1, routing.expected_tiles)) * p.n_tiles;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  p.splits = split_count(busy_tiles, slots, p.k_tiles);
  at::Tensor partials;  // the counter path: tiles past *num_padded exit at once, so no cluster could meet
  if (p.splits > 1) partials = split_k_workspace(p, Cfg::ROWS * Cfg::TN, device, stream);
  const dim3 grid(p.n_tiles, p.m_tiles, p.splits);
  marlin_gemm_kernel<T, Cfg, true><<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_moe_gemm(MoeTile tile, const MoeGemmArgs& args, const MoeRouting& routing, int device) {
  switch (tile) {
    case MoeTile::kM16:
      return launch_moe_gemm_config<T, ConfigM16>(args, routing, device);
    case MoeTile::kM32:
      return launch_moe_gemm_config<T, ConfigM32>(args, routing, device);
    case MoeTile::kM64:
      return launch_moe_gemm_config<T, ConfigM64>(args, routing, device);
    case MoeTile::kLarge:
      return launch_moe_gemm_config<T, ConfigLarge>(args, routing, device);
  }
  TORCH_CHECK(false, "nvfp4_C::marlin_moe: unknown tile config");
}

}  // namespace nvfp4
