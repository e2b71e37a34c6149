// W4A16 NVFP4 GEMM on Hopper's warpgroup MMA (sm_90a), for M from a few dozen rows up.
//
// Why: at M >= 64 the mma.sync kernels (gemm_kernel.cuh) run ~100-300 TFLOP/s: every HMMA is issued by the
// same warps that dequantize, so the tensor cores idle while they do (docs/kernels.md). wgmma is asynchronous:
// a warpgroup issues the MMAs of k16 step s and dequantizes step s+1 while they run.
//
// Orientation C^T = W X^T (as the decode kernel): the dequantized weights are the wgmma A operand, straight from
// registers (the layout's 16-byte lane chunk is already four m16 A fragments: dequant.cuh), and the activation
// tile is B, read by the tensor cores from shared memory (K-major, 128-byte swizzle). So the tokens are the MMA's
// N = NTOK (64, 128 or 256) and no tensor-core row is wasted on padding at M = 64, 128 or 256.
//
// CTA: WG warpgroups, each FRAGS m16 fragments x 4 warps = 64 * FRAGS weight columns, all over the same
// NTOK x K-range activation tile. Pipeline: STAGES k-tiles of 64 (activations, weight tiles and scale codes by
// cp.async; WeightStageLoader as the mma.sync kernels). Per k16 step a warp loads its weights and scale codes
// from shared memory, dequantizes them into A fragments, issues FRAGS wgmma (one commit group) and waits for
// the previous group only. The A registers of a running group are kept live (fenced) until that wait: the
// compiler does not extend their lifetime by itself (benchmarks/sass_stats.py and tests/test_wgmma_sass.py
// check the SASS). The stage loaded next is the one read two stages ago (the previous stage's last group may
// still be running). The end is the mma.sync kernels': FP32 tile in shared memory, split-K and epilogue
// (store_tile).
#pragma once

#include "gemm_kernel.cuh"
#include "wgmma.cuh"

namespace nvfp4 {

template <int NTOK_, int FRAGS_, int WG_, int STAGES_, int MIN_BLOCKS_>
struct WgmmaConfig {
  static constexpr int NTOK = NTOK_;      // rows of x per tile = wgmma N
  static constexpr int FRAGS = FRAGS_;    // m16 weight fragments (int32 of the layout) per warp per k16 step
  static constexpr int WG = WG_;          // warpgroups per CTA
  static constexpr int STAGES = STAGES_;  // pipeline stages (k-tiles of 64)
  static constexpr int THREADS = 128 * WG;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;  // resident CTAs per SM the registers must allow
  static constexpr int ROWS = NTOK;
  static constexpr int TN = WG * FRAGS * 64;
  static constexpr int TK = 64;  // one 128-byte swizzle row of 16-bit activations
  static constexpr int K16 = TK / 16;
  static constexpr int WARPS_PER_TILE64 = 4 / FRAGS;  // warps sharing one 16 x 64 tile of the layout
  static constexpr int A_BYTES = NTOK * TK * 2;
  static constexpr int B_BYTES = K16 * TN * 8;
  static constexpr int S_BYTES = K16 * TN;
  static constexpr int STAGE_BYTES = (A_BYTES + B_BYTES + S_BYTES + 1023) / 1024 * 1024;  // swizzle-atom aligned
  static constexpr int C_STRIDE = TN + 8;
  static constexpr int C_BYTES = ROWS * C_STRIDE * 4;
  static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
  // + 1024: the dynamic shared memory is aligned up to the swizzle atom inside the kernel.
  static constexpr int SMEM_BYTES = (PIPE_BYTES > C_BYTES ? PIPE_BYTES : C_BYTES) + 1024;
  static_assert(FRAGS == 1 || FRAGS == 2 || FRAGS == 4, "a warp dequantizes 4, 8 or 16 bytes of its layout chunk");
  static_assert(NTOK == 64 || NTOK == 128 || NTOK == 256, "wgmma widths instantiated in wgmma.cuh");
  static_assert((NTOK * 8) % THREADS == 0, "whole activation loader rounds");
  static_assert(STAGES >= 3, "one stage computed, one draining, at least one in flight");
};

// FRAGS int32 of the layout (m16 fragments of 16 weight columns each) and their scale codes (2 bytes per
// fragment: words sc[f / 2], starting at byte `byte0` of sc[0] when FRAGS == 1) -> the wgmma A fragments:
// rows = columns 16f + lane/4 and +8, k as the mma A fragment.
template <typename T, int FRAGS>
__device__ __forceinline__ void dequant_a_fragments(const uint32_t (&q)[FRAGS], const uint32_t (&sc)[(FRAGS + 1) / 2],
                                                    uint32_t byte0, uint32_t (&a)[FRAGS][4]) {
#pragma unroll
  for (int f = 0; f < FRAGS; ++f) {
    const uint32_t byte = FRAGS == 1 ? byte0 : 2 * (f % 2);
    uint32_t lo[2], hi[2];
    dequant_int32<T>(q[f], scale_pair_at<T>(sc[f / 2], byte), lo, hi);
    a[f][0] = lo[0], a[f][1] = hi[0], a[f][2] = lo[1], a[f][3] = hi[1];
  }
}

// The end of a wgmma kernel, once every MMA has retired and shared memory is free: this warp's accumulators ->
// the CTA's [NTOK rows of x, TN columns] FP32 tile, then split-K and the epilogue (store_tile). Fragment j of the
// m64 x NTOK tile: acc[j][4i + e] is column col0 + 16 j + lane/4 (+8 for e >= 2), row 8i + 2 (lane % 4) (+1 for
// odd e). The tile is the grid's: blockIdx = (column tile, row tile, split), as both wgmma kernels launch.
template <typename T, class Cfg>
__device__ __forceinline__ void finish_wgmma_tile(uint8_t* smem, const MarlinGemmParams& p,
                                                  const float (&acc)[Cfg::FRAGS][Cfg::NTOK / 2], int col0) {
  const int lane = threadIdx.x & 31;
  float* c_sh = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int j = 0; j < Cfg::FRAGS; ++j) {
    const int col = col0 + 16 * j + (lane >> 2);
#pragma unroll
    for (int i = 0; i < Cfg::NTOK / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = 8 * i + 2 * (lane & 3) + (e & 1);
        c_sh[row * Cfg::C_STRIDE + col + 8 * (e >> 1)] = acc[j][4 * i + e];
      }
  }
  __syncthreads();
  auto routed_id = [&](int r) -> int64_t { return r < p.m ? r : -1; };
  store_tile<T, Cfg, false>(smem, p, p.global_scale, blockIdx.y, blockIdx.x, blockIdx.z, routed_id);
}

template <typename T, class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS) marlin_wgmma_kernel(const MarlinGemmParams p) {
#if NVFP4_HAS_WGMMA
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t* smem = swizzle_atom_aligned(smem_raw);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wg = warp / 4, wi = warp % 4;  // warpgroup, warp within it (= its 16 rows of the wgmma's 64)
  const int n_tile = blockIdx.x, m_tile = blockIdx.y, split = blockIdx.z;
  const int m0 = m_tile * Cfg::NTOK;
  const int n0 = n_tile * Cfg::TN;
  const int kt_begin = static_cast<int>(static_cast<int64_t>(split) * p.k_tiles / p.splits);
  const int kt_end = static_cast<int>(static_cast<int64_t>(split + 1) * p.k_tiles / p.splits);
  const int num_k = kt_end - kt_begin;

  // Activation load plan: chunk c (8 values) of tile row r goes to r * 128 + (c ^ (r % 8)) * 16 (the wgmma
  // 128-byte swizzle). Rows >= M and columns >= K are zero-filled (cp.async src-size 0). A thread copies chunk
  // c = tid % 8 of rows r0 + j * ROW_STEP (ROW_STEP = THREADS / 8, a multiple of 8): one column, one swizzle, so
  // its destinations are a constant distance apart and one pointer, one column and one destination serve all
  // A_ITERS copies (fewer registers, and fewer instructions per stage than per-copy arrays).
  constexpr int A_ITERS = Cfg::NTOK * 8 / Cfg::THREADS;
  constexpr int ROW_STEP = Cfg::THREADS / 8;
  static_assert(ROW_STEP % 8 == 0, "every copy of a thread in the same swizzle phase");
  const T* a_base = static_cast<const T*>(p.a);
  const int a_r0 = tid / 8, a_c = tid % 8;
  const uint32_t a_dst = a_r0 * 128 + ((a_c ^ (a_r0 & 7)) * 16);
  const int64_t a_row_step = static_cast<int64_t>(ROW_STEP) * p.lda;
  int a_col = kt_begin * Cfg::TK + a_c * 8;
  const T* a_src = a_base + static_cast<int64_t>(m0 + a_r0) * p.lda + a_col;  // not read for rows >= M
  bool a_row_ok[A_ITERS];
#pragma unroll
  for (int it = 0; it < A_ITERS; ++it) a_row_ok[it] = m0 + a_r0 + it * ROW_STEP < p.m;
  WeightStageLoader<Cfg> weights(p, p.b, p.s, n0, kt_begin);
  auto load_next = [&](int stage) {
    uint8_t* base = smem + stage * Cfg::STAGE_BYTES + a_dst;
    const bool col_ok = a_col < p.k;
#pragma unroll
    for (int it = 0; it < A_ITERS; ++it) {
      const bool ok = a_row_ok[it] && col_ok;
      cp_async16(base + it * ROW_STEP * 128, ok ? a_src + it * a_row_step : a_base, ok);
    }
    a_src += Cfg::TK;
    a_col += Cfg::TK;
    weights.load(smem + stage * Cfg::STAGE_BYTES + Cfg::A_BYTES);
  };

  // This warp's weights: layout tile `tile` (of the CTA's TN / 64) and its int32 `first` .. first + FRAGS - 1.
  const int tile = wg * Cfg::FRAGS + wi / Cfg::WARPS_PER_TILE64;
  const int first = (wi % Cfg::WARPS_PER_TILE64) * Cfg::FRAGS;
  const uint32_t scale_byte0 = Cfg::FRAGS == 1 ? 2 * (first % 2) : 0;  // its scale codes in the loaded word
  uint32_t a_running[Cfg::FRAGS][4] = {};  // A fragments of the MMAs in flight (see fence_fragment)

  float acc[Cfg::FRAGS][Cfg::NTOK / 2];
#pragma unroll
  for (int j = 0; j < Cfg::FRAGS; ++j)
#pragma unroll
    for (int i = 0; i < Cfg::NTOK / 2; ++i) acc[j][i] = 0.0f;
#pragma unroll
  for (int j = 0; j < Cfg::FRAGS; ++j) fence_accumulators(acc[j]);

  auto compute_stage = [&](int stage) {
    const uint8_t* base = smem + stage * Cfg::STAGE_BYTES;
    // Activation descriptor of k16 step kk: the start address field (bytes / 16) advanced by 32 bytes per step.
    const uint64_t x_desc = sw128_kmajor_desc(smem_addr(base));
    const uint32_t* b_sh = reinterpret_cast<const uint32_t*>(base + Cfg::A_BYTES);
    const uint8_t* s_sh = base + Cfg::A_BYTES + Cfg::B_BYTES;
    // Fragments of step kk + 1 are loaded from shared memory before step kk is dequantized.
    uint32_t q[2][Cfg::FRAGS], sc[2][(Cfg::FRAGS + 1) / 2];
    auto load_frags = [&](int buf, int kk) {
      const uint32_t* bw = b_sh + kk * (Cfg::TN * 2) + tile * 128 + lane * 4 + first;
      const uint8_t* sw = s_sh + kk * Cfg::TN + tile * 64 + (lane >> 2) * 8 + (first / 2) * 4;
      if constexpr (Cfg::FRAGS == 4) {
        const uint4 v = *reinterpret_cast<const uint4*>(bw);
        q[buf][0] = v.x, q[buf][1] = v.y, q[buf][2] = v.z, q[buf][3] = v.w;
        const uint2 s = *reinterpret_cast<const uint2*>(sw);
        sc[buf][0] = s.x, sc[buf][1] = s.y;
      } else if constexpr (Cfg::FRAGS == 2) {
        const uint2 v = *reinterpret_cast<const uint2*>(bw);
        q[buf][0] = v.x, q[buf][1] = v.y;
        sc[buf][0] = *reinterpret_cast<const uint32_t*>(sw);
      } else {
        q[buf][0] = *bw;
        sc[buf][0] = *reinterpret_cast<const uint32_t*>(sw);
      }
    };
    load_frags(0, 0);
#pragma unroll
    for (int kk = 0; kk < Cfg::K16; ++kk) {
      if (kk + 1 < Cfg::K16) load_frags((kk + 1) & 1, kk + 1);
      uint32_t a[Cfg::FRAGS][4];
      dequant_a_fragments<T, Cfg::FRAGS>(q[kk & 1], sc[kk & 1], scale_byte0, a);
      wgmma_fence();
      const uint64_t desc = x_desc + 2 * kk;
#pragma unroll
      for (int j = 0; j < Cfg::FRAGS; ++j) wgmma_rs<T, Cfg::NTOK>(acc[j], a[j], desc);
      wgmma_commit();
      wgmma_wait<1>();  // the previous step's MMAs are done: its A registers and (at kk = 0) its stage are free
#pragma unroll
      for (int j = 0; j < Cfg::FRAGS; ++j) {
        fence_fragment(a_running[j]);  // retired only now: its registers were not reused before the wait
#pragma unroll
        for (int r = 0; r < 4; ++r) a_running[j][r] = a[j][r];
      }
    }
  };

  // Pipeline: STAGES - 2 k-tiles in flight ahead of the one computed; the slot refilled at iteration i is the
  // one of k-tile i - 2 (all of its MMA groups have completed, see wgmma_wait<1> above).
#pragma unroll
  for (int s = 0; s < Cfg::STAGES - 2; ++s) {
    if (s < num_k) load_next(s);
    cp_async_commit();
  }
  for (int i = 0; i < num_k; ++i) {
    cp_async_wait<Cfg::STAGES - 3>();
    fence_proxy_async_shared();  // this thread's activation copies -> visible to the tensor cores
    __syncthreads();
    const int next = i + Cfg::STAGES - 2;
    if (next < num_k) load_next(next % Cfg::STAGES);
    cp_async_commit();
    compute_stage(i % Cfg::STAGES);
  }
  wgmma_wait<0>();
#pragma unroll
  for (int j = 0; j < Cfg::FRAGS; ++j) {
    fence_fragment(a_running[j]);
    fence_accumulators(acc[j]);
  }
  cp_async_wait<0>();
  __syncthreads();

  finish_wgmma_tile<T, Cfg>(smem, p, acc, tile * 64 + 16 * first);
#else
  __trap();  // not an sm_90a build: the host never launches this (launch_wgmma_with_config)
#endif
}

}  // namespace nvfp4
