// Decode W4A16 NVFP4 GEMM (8 rows of A per CTA, built for M <= 8): the weight stream goes from global memory straight into registers.
//
// At decode M the GEMM only has to stream the FP4 weights at the memory bandwidth, and the tiled kernel
// (gemm_kernel.cuh) spends its issue slots elsewhere: ncu on an H200, 28672 x 4096 at M = 1, showed 0.61
// warp instructions issued per scheduler cycle for 1.94 TB/s (40% of DRAM peak; cuBLAS BF16 streams 4.1 TB/s
// at 0.09), i.e. ~170 instructions per warp per 512-byte k16 step: the cp.async plan, the shared-memory
// round trip, a barrier per stage. Here a warp owns 64 columns and every WARPS_K-th k16 step of the CTA's K
// range and keeps STEPS k16 steps of loads in flight in registers: per step one 16-byte weight load, one
// 8-byte scale-code load and two 4-byte activation loads (rows lane/4 < M of the m16 A fragment; rows
// 8..15 are zero), then the same dequantize + mma.m16n8k16 as the tiled kernel (mma_k16). No shared memory
// and no barrier until the end, where finish_tile (k-warp reduction, split-K, epilogue) is the tiled
// kernel's, with 16-row tiles of which rows >= M are never stored.
#pragma once

#include "gemm_kernel.cuh"

namespace nvfp4 {

template <int WARPS_N_, int WARPS_K_, int STEPS_, int MIN_BLOCKS_>
struct GemvConfig {
  static constexpr int MB = 1;
  static constexpr int WARPS_M = 1;
  static constexpr int WARPS_N = WARPS_N_;
  static constexpr int WARPS_K = WARPS_K_;
  static constexpr int STEPS = STEPS_;  // k16 steps of loads in flight per warp
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int THREADS = 32 * WARPS_N * WARPS_K;
  static constexpr int ROWS = 8;  // rows of A per m-tile (blockIdx.y): the m16 fragment's rows 0..7
  static constexpr int TN = 64 * WARPS_N;
  static constexpr int C_STRIDE = TN + 8;
  static constexpr int SMEM_BYTES = 16 * C_STRIDE * 4;  // finish_tile's FP32 tile: the warps write all 16 rows
};

// Read-only loads: the weight stream is used once (no L1 allocation); activations are re-read by every
// column warp of the CTA (L1).
__device__ __forceinline__ uint4 ld_stream_v4(const int4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}
__device__ __forceinline__ uint2 ld_stream_v2(const uint8_t* p) {
  uint2 r;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];\n" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}

template <typename T, class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS) marlin_gemv_kernel(const MarlinGemmParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wn = warp % Cfg::WARPS_N;
  const int wk = warp / Cfg::WARPS_N;
  const int n_tile = blockIdx.x, m_tile = blockIdx.y, split = blockIdx.z;

  // This warp's k16 steps: k16 = kb + wk + i * WARPS_K for kb..ke, the CTA's share of the real K (rows of the
  // layout at or past K/16 are zero padding and are not read). A 64-column tile past N_pad has no steps.
  const int k16_total = p.k / 16;
  const int kb = static_cast<int>(static_cast<int64_t>(split) * k16_total / p.splits);
  const int ke = static_cast<int>(static_cast<int64_t>(split + 1) * k16_total / p.splits);
  const int tile64 = n_tile * Cfg::WARPS_N + wn;
  int steps = ke - kb - wk > 0 ? (ke - kb - wk + Cfg::WARPS_K - 1) / Cfg::WARPS_K : 0;
  if (tile64 >= p.n_pad / 64) steps = 0;

  const int k16 = kb + wk;
  const int4* b_ptr = p.b + static_cast<int64_t>(k16) * (p.n_pad / 2) + tile64 * 32 + lane;
  const uint8_t* s_ptr = p.s + static_cast<int64_t>(k16) * p.n_pad + tile64 * 64 + (lane >> 2) * 8;
  // A fragment rows lane/4 (a[0], a[2]: this tile's 8 rows) and lane/4 + 8 (a[1], a[3]: zero). Rows past M
  // read row M-1 instead (always in bounds, finite): an MMA row depends only on its own A row, and output rows
  // past M are never stored, so the loads need no predicate.
  const int row = min(m_tile * Cfg::ROWS + (lane >> 2), p.m - 1);
  const uint32_t* a_ptr = reinterpret_cast<const uint32_t*>(static_cast<const T*>(p.a) +
                                                            static_cast<int64_t>(row) * p.lda + k16 * 16 +
                                                            2 * (lane & 3));
  const int64_t b_step = static_cast<int64_t>(Cfg::WARPS_K) * (p.n_pad / 2);
  const int64_t s_step = static_cast<int64_t>(Cfg::WARPS_K) * p.n_pad;
  constexpr int a_step = Cfg::WARPS_K * 16 / 2;  // uint32 (two activations) per step

  // Ring of STEPS slots in registers. Loads are unconditional (no branch may separate a load from its slot,
  // or the compiler funnels the ring through copies that wait on the load): once the pointers reach this
  // warp's last step they stop advancing, so the few loads past the end re-read that step. A warp with no
  // steps (tile past N_pad, or no k16 steps in its slice) loads nothing.
  uint4 bq[Cfg::STEPS];
  uint2 sc[Cfg::STEPS];
  uint32_t a_lo[Cfg::STEPS], a_hi[Cfg::STEPS];
  int loaded = 0;
  auto load = [&](int slot) {
    bq[slot] = ld_stream_v4(b_ptr);
    sc[slot] = ld_stream_v2(s_ptr);
    a_lo[slot] = __ldg(a_ptr);
    a_hi[slot] = __ldg(a_ptr + 4);
    const bool advance = ++loaded < steps;
    b_ptr += advance ? b_step : 0;
    s_ptr += advance ? s_step : 0;
    a_ptr += advance ? a_step : 0;
  };

  float acc[1][8][4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[0][nt][i] = 0.0f;

  if (steps > 0) {
#pragma unroll
    for (int u = 0; u < Cfg::STEPS; ++u) load(u);
    for (int base = 0; base < steps; base += Cfg::STEPS) {
#pragma unroll
      for (int u = 0; u < Cfg::STEPS; ++u) {
        const uint32_t a[1][4] = {{a_lo[u], 0u, a_hi[u], 0u}};
        const uint4 q = bq[u];
        const uint2 s = sc[u];
        if (base + u < steps) mma_k16<T, 1>(acc, a, q, s);
        load(u);
      }
    }
  }

  auto routed_id = [&](int r) -> int64_t { return r < p.m ? r : -1; };
  finish_tile<T, Cfg, false>(acc, smem, p, p.global_scale, m_tile, n_tile, split, /*warp_row0=*/0, wn, wk,
                             routed_id);
}

}  // namespace nvfp4
