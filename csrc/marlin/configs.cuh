// The tile configs of the dense kernels (no ATen: tests/test_wgmma_sass.py compiles the wgmma ones alone).
#pragma once

#include "gemm_kernel.cuh"
#include "gemv_kernel.cuh"
#include "stream_wgmma_kernel.cuh"
#include "wgmma_kernel.cuh"

namespace nvfp4 {

// Config by M (docs/kernels.md): GemmConfig<MB per warp, WARPS_M, TN, TK, STAGES, THREADS, MIN_BLOCKS>.
// M <= 64: 8-warp CTAs of 16/32/64 x 128, warps split 2 (n) x 4 (k), split-K fills the GPU (measured faster
// than 4-warp CTAs at 4 CTAs/SM, docs/kernels.md). M > 64: 128 x 256 tiles, 8 warps of 64 x 64 over the
// whole k-tile (no cross-warp reduction), so each weight byte feeds 8 m16 blocks.
using ConfigM16 = GemmConfig<1, 1, 128, 128, 4, 256, 2>;
using ConfigM32 = GemmConfig<2, 1, 128, 128, 4, 256, 2>;
using ConfigM64 = GemmConfig<4, 1, 128, 128, 4, 256, 1>;
using ConfigLarge = GemmConfig<4, 2, 256, 64, 4, 256, 1>;
// Decode (gemv_kernel.cuh): 8-row tiles, 8 warps = 2 (n) x 4 (k), 6 k16 steps of loads in flight per warp.
using ConfigGemv8 = GemvConfig<2, 4, 6, 2>;
// 16 rows (M = 9..16): two MMAs per dequantized fragment, a ring of 5 steps to stay within 2 CTAs per SM.
using ConfigGemv16 = GemvConfig<2, 4, 5, 2, 2>;
// The same with x loaded in 4-step blocks through a per-warp buffer (gemv_kernel.cuh "x in blocks").
using ConfigGemv16b = GemvConfig<2, 4, 4, 2, 2, true>;
// gemv8 with x in blocks (M = 2..8: 16 of its ~22 L1 wavefronts per k16 step are x loads at 8 distinct rows).
using ConfigGemv8b = GemvConfig<2, 4, 4, 2, 1, true>;
constexpr int kGemvMinStepsPerWarp = 4;  // split K no finer than this many k16 steps per warp
// Hopper warpgroup MMA (wgmma_kernel.cuh): WgmmaConfig<NTOK rows of x, FRAGS, warpgroups, STAGES, MIN_BLOCKS>,
// named rows x columns of the CTA tile; a warp dequantizes 16 * FRAGS columns per k16 step.
using ConfigWg64x512 = WgmmaConfig<64, 4, 2, 5, 1>;
using ConfigWg64x256 = WgmmaConfig<64, 2, 2, 4, 2>;
using ConfigWg128x256 = WgmmaConfig<128, 2, 2, 5, 1>;
using ConfigWg256x128 = WgmmaConfig<256, 1, 2, 4, 1>;
// 4 warpgroups of one fragment each: the same tile area per dequantized weight as 2 x 2 fragments, with half
// the accumulators per thread, so 16 warps per SM hide the dequantization latency.
using ConfigWg64x256w4 = WgmmaConfig<64, 1, 4, 4, 2>;
using ConfigWg128x256w4 = WgmmaConfig<128, 1, 4, 5, 1>;
// Half of wg128x256w4's tile at 2 CTAs per SM: the same 16 warps per SM, twice the tiles and twice the clusters
// resident at once (H200: 79 of 3 and 62 of 4, against 39 and 30). auto takes it, mostly with the fit flag, on
// the 4096-wide shapes at M = 64-128 (4096 x 14336, M = 128: 36.8 us against 40.6 for wg128x256w4; docs/kernels.md).
using ConfigWg128x128 = WgmmaConfig<128, 1, 2, 5, 2>;
// wg64x256w4's warps per SM (16 here, at 2 CTAs of 8 warps) with the registers to keep one MMA group in flight:
// at 64 registers ptxas serializes wg64x256w4's wgmma (C7512); this one compiles to 95, not serialized.
using ConfigWg64x128 = WgmmaConfig<64, 1, 2, 4, 2>;
// Decode-kernel weight stream on wgmma (stream_wgmma_kernel.cuh): StreamWgmmaConfig<NTOK rows of x, FRAGS,
// warpgroups, STEPS, CHUNK k16 steps of activations per buffer, MIN_BLOCKS>, named rows x columns.
using ConfigSw16x512 = StreamWgmmaConfig<16, 4, 2, 8, 48, 2>;

}  // namespace nvfp4
