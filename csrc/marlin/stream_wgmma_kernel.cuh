// W4A16 NVFP4 GEMM for a few dozen rows or fewer on Hopper's warpgroup MMA (sm_90a): the decode kernel's weight
// stream (global memory straight into registers, no shared-memory stage, no barrier per k-tile) feeding wgmma.
//
// Why: at M = 9..64 the decode kernel (gemv_kernel.cuh) issues mma.sync m16n8k16 per 8 rows of x (8 per k16 step
// at M = 16) and the wgmma kernel (wgmma_kernel.cuh) stages the weights through shared memory behind a barrier
// per k-tile: both cost 1.3-1.5x the M = 1 time at M = 16 and 1.4-2.5x the memory floor at M = 64 (H200,
// docs/kernels.md). Here the tokens are wgmma's N (16 or 64), so one asynchronous MMA covers 16 weight columns
// of each warp for all the rows at once, and the weights take the decode kernel's path.
// Measured (H200, docs/kernels.md "Ninth session"): 16 rows x 512 columns beats the decode kernel at M = 12..16
// on the widest layers (28672 x 8192, M = 16: 50.5-51.2 vs 55.4-56.3 us) and loses where the N tiles are
// too few to fill the GPU without deep split-K (8192 x 8192: 31 vs 21 us); 64 rows x 256 lost to the wgmma
// kernel at M = 64 on every shape (8192 x 8192: 42.5 vs 35.5 us), so only sw16x512 is built.
//
// Orientation C^T = W X^T as the other kernels. A warpgroup's 4 warps each own FRAGS m16 fragments (16 columns
// each) of the layout; wgmma j takes fragment j of every warp as its 64 rows (warp w supplies rows 16w..16w+15),
// so a warpgroup covers 64 * FRAGS columns; WG_N warpgroups side by side cover the CTA's TN columns, all over the
// same k16 steps (so every address a wgmma reads is warp-uniform: no per-thread descriptor moves to uniform
// registers, which a split of the steps between warpgroups cost: 8 R2UR per step). The activations are wgmma's B
// operand: the CTA loads them chunk by chunk (CHUNK
// k16 steps of all its NTOK rows, K-major with the 128-byte swizzle as in wgmma_kernel.cuh), double-buffered by
// cp.async, with two barriers per chunk. Per k16 step a warp takes its weights and scale codes from a ring of
// STEPS register slots (loads unconditional; pointers stop at its last step), dequantizes them into A
// fragments, issues FRAGS wgmma (one commit group) and waits for the previous group only; the A registers of the
// group in flight stay live until that wait (fence_fragment, as wgmma_kernel.cuh). The end is the other
// kernels': FP32 tile in shared memory (warpgroups added in order), split-K, epilogue (store_tile).
#pragma once

#include <type_traits>

#include "gemv_kernel.cuh"
#include "wgmma_kernel.cuh"  // dequant_a_fragments, finish_wgmma_tile

namespace nvfp4 {

template <int NTOK_, int FRAGS_, int WG_N_, int STEPS_, int CHUNK_, int MIN_BLOCKS_>
struct StreamWgmmaConfig {
  static constexpr int NTOK = NTOK_;    // rows of x per tile = wgmma N
  static constexpr int FRAGS = FRAGS_;  // m16 fragments per warp per k16 step (4: its whole 16-byte lane chunk)
  static constexpr int WG_N = WG_N_;    // warpgroups, each its own 64 * FRAGS columns over the same k16 steps
  static constexpr int STEPS = STEPS_;  // k16 steps of weight loads in flight per warp
  static constexpr int CHUNK = CHUNK_;  // k16 steps of activations per shared-memory buffer (CTA-wide)
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int THREADS = 128 * WG_N;
  static constexpr int ROWS = NTOK;
  static constexpr int TN = 64 * FRAGS * WG_N;
  static constexpr int TILE_BYTES = NTOK * 128;                // one 64-k tile of NTOK rows (swizzle rows)
  static constexpr int BUF_BYTES = CHUNK / 4 * TILE_BYTES;     // one chunk of activations
  static constexpr int A_ITERS = CHUNK / 4 * NTOK * 8 / THREADS;  // 16-byte copies per thread per chunk
  static constexpr int C_STRIDE = TN + 8;
  static constexpr int C_BYTES = ROWS * C_STRIDE * 4;
  static constexpr int SMEM_BYTES = (2 * BUF_BYTES > C_BYTES ? 2 * BUF_BYTES : C_BYTES) + 1024;
  static_assert(NTOK == 16 || NTOK == 64, "wgmma widths instantiated in wgmma.cuh for this kernel");
  static_assert(FRAGS == 2 || FRAGS == 4, "a warp loads 8 or 16 bytes of its lane chunk");
  static_assert(STEPS % 4 == 0 && CHUNK % STEPS == 0, "ring turns of whole 64-k tiles, chunks of whole turns");
  static_assert(A_ITERS >= 1 && (CHUNK / 4 * NTOK * 8) % THREADS == 0, "whole activation loader rounds");
};

// Read-only streaming load of 4 bytes (the scale codes of FRAGS = 2; 8 and 16 bytes: gemv_kernel.cuh).
__device__ __forceinline__ uint32_t ld_stream_u32(const void* p) {
  uint32_t r;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];\n" : "=r"(r) : "l"(p));
  return r;
}

template <typename T, class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS) marlin_stream_wgmma_kernel(const MarlinGemmParams p) {
#if NVFP4_HAS_WGMMA
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t* smem = swizzle_atom_aligned(smem_raw);
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wg = warp / 4, wi = warp % 4;
  const int n_tile = blockIdx.x, m_tile = blockIdx.y, split = blockIdx.z;
  const int m0 = m_tile * Cfg::NTOK;

  // The CTA's k16 steps [kb, ke) of the real K, step i = k16 kb + i for every warpgroup.
  const int k16_total = p.k / 16;
  const int kb = static_cast<int>(static_cast<int64_t>(split) * k16_total / p.splits);
  const int ke = static_cast<int>(static_cast<int64_t>(split + 1) * k16_total / p.splits);
  // This warp's columns: layout tile `tile64`, its int32 first .. first + FRAGS - 1 (16 columns each).
  const int tile64 = n_tile * (Cfg::TN / 64) + wg * Cfg::FRAGS + wi * Cfg::FRAGS / 4;
  const int first = (wi * Cfg::FRAGS) % 4;
  // wgmma is warpgroup-wide, so every warp runs every step: a warp whose tile is past N_pad (the last column
  // tile) streams the last real tile instead; those columns are never stored.
  const int steps = ke - kb;
  const int load_tile64 = min(tile64, p.n_pad / 64 - 1);

  // ---- activation chunks: chunk c holds k16 steps kb + c * CHUNK .., rows m0 .. m0 + NTOK - 1 -------------------
  const int chunks = (ke - kb + Cfg::CHUNK - 1) / Cfg::CHUNK;
  const T* a_base = static_cast<const T*>(p.a);
  auto load_chunk = [&](int c) {  // every thread; rows past M and columns past K are zero-filled
    uint8_t* buf = smem + (c & 1) * Cfg::BUF_BYTES;
    // Addresses recomputed per chunk from an opaque copy of tid: else the compiler hoists them out of the chunk
    // loop and keeps A_ITERS pointers and predicates live through the main loop (~50 registers at A_ITERS = 16).
    int tid_here = tid;
    asm volatile("" : "+r"(tid_here));
#pragma unroll
    for (int it = 0; it < Cfg::A_ITERS; ++it) {
      const int i = tid_here + it * Cfg::THREADS;
      const int t = i / (Cfg::NTOK * 8), r = (i / 8) % Cfg::NTOK, ch = i % 8;  // 64-k tile, row, 16-byte chunk
      const int col = (kb + c * Cfg::CHUNK) * 16 + t * 64 + ch * 8;
      const bool ok = c < chunks && m0 + r < p.m && col < p.k;
      const T* src = ok ? a_base + static_cast<int64_t>(m0 + r) * p.lda + col : a_base;
      cp_async16(buf + t * Cfg::TILE_BYTES + r * 128 + ((ch ^ (r & 7)) * 16), src, ok);
    }
  };

  // ---- weight ring (gemv_kernel.cuh): unconditional loads, pointers stop at this warp's last step -------------
  const int k16 = kb;
  const uint32_t* b_ptr = reinterpret_cast<const uint32_t*>(p.b + static_cast<int64_t>(k16) * (p.n_pad / 2) +
                                                            load_tile64 * 32 + lane) + first;
  const uint8_t* s_ptr = p.s + static_cast<int64_t>(k16) * p.n_pad + load_tile64 * 64 + (lane >> 2) * 8 + first * 2;
  const int b_step = (p.n_pad / 2) * 4;  // uint32 per step
  const int s_step = p.n_pad;
  uint32_t bq[Cfg::STEPS][Cfg::FRAGS];
  uint32_t sc[Cfg::STEPS][Cfg::FRAGS / 2];
  int loaded = 0;  // loads issued; `clamp`: the pointers stop at the last step (else the turn's loads are all
                   // for steps before it and the caller counts them)
  auto load = [&](int slot, auto clamp) {
    if constexpr (Cfg::FRAGS == 4) {
      const uint4 v = ld_stream_v4(reinterpret_cast<const int4*>(b_ptr));
      bq[slot][0] = v.x, bq[slot][1] = v.y, bq[slot][2] = v.z, bq[slot][3] = v.w;
      const uint2 s = ld_stream_v2(s_ptr);
      sc[slot][0] = s.x, sc[slot][1] = s.y;
    } else {
      const uint2 v = ld_stream_v2(b_ptr);
      bq[slot][0] = v.x, bq[slot][1] = v.y;
      sc[slot][0] = ld_stream_u32(s_ptr);
    }
    const bool advance = !decltype(clamp)::value || ++loaded < steps;
    b_ptr += advance ? b_step : 0;
    s_ptr += advance ? s_step : 0;
  };
  constexpr std::true_type kClamp{};
  constexpr std::false_type kAhead{};

  float acc[Cfg::FRAGS][Cfg::NTOK / 2];
#pragma unroll
  for (int j = 0; j < Cfg::FRAGS; ++j)
#pragma unroll
    for (int i = 0; i < Cfg::NTOK / 2; ++i) acc[j][i] = 0.0f;
#pragma unroll
  for (int j = 0; j < Cfg::FRAGS; ++j) fence_accumulators(acc[j]);

  // Step in ring slot u, at k16 offset `off` inside the current chunk's buffer.
  // off: the step's k16 offset from the ring turn's first step (a compile-time constant once unrolled).
  auto compute = [&](int u, int off, uint64_t turn_desc) {
    // Pin this step's dequantization after the previous step's wait (volatile asm keeps its order): left free,
    // ptxas dequantizes several steps ahead to fill the waits and needs ~25 more registers per ring slot.
    fence_fragment(bq[u]);
    fence_fragment(sc[u]);
    uint32_t a[Cfg::FRAGS][4];
    dequant_a_fragments<T, Cfg::FRAGS>(bq[u], sc[u], 0, a);
    const uint64_t desc = turn_desc + ((off / 4) * Cfg::TILE_BYTES + (off % 4) * 32) / 16;  // start address field
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < Cfg::FRAGS; ++j) wgmma_rs<T, Cfg::NTOK>(acc[j], a[j], desc);
    wgmma_commit();
    // This step's MMAs retire before the next step is dequantized: one set of A registers (a second set in
    // flight did not fit 2 CTAs per SM), and the other warps of the SM fill the wait.
    wgmma_wait<0>();
#pragma unroll
    for (int j = 0; j < Cfg::FRAGS; ++j) fence_fragment(a[j]);  // A registers live until the retiring wait
  };

  load_chunk(0);
  cp_async_commit();
  load_chunk(1);
  cp_async_commit();
  if (steps > 0) {
#pragma unroll
    for (int u = 0; u < Cfg::STEPS; ++u) load(u, kClamp);
  }
  for (int c = 0; c < chunks; ++c) {
    cp_async_wait<1>();  // chunk c has landed (c + 1 may still be in flight)
    fence_proxy_async_shared();
    __syncthreads();
    const uint32_t buf_addr = smem_addr(smem + (c & 1) * Cfg::BUF_BYTES);
    for (int base = c * Cfg::CHUNK; base < (c + 1) * Cfg::CHUNK && base < steps; base += Cfg::STEPS) {
      const uint64_t turn_desc = sw128_kmajor_desc(buf_addr + (base - c * Cfg::CHUNK) / 4 * Cfg::TILE_BYTES);
      // Steady turn: every load is for a step strictly before the last, so the pointers never pass it (the
      // clamped turns load at them; gemv_kernel.cuh).
      if (base + 2 * Cfg::STEPS < steps) {
#pragma unroll
        for (int u = 0; u < Cfg::STEPS; ++u) {
          compute(u, u, turn_desc);
          load(u, kAhead);
        }
        loaded += Cfg::STEPS;
      } else {
#pragma unroll
        for (int u = 0; u < Cfg::STEPS; ++u) {
          if (base + u < steps) compute(u, u, turn_desc);
          load(u, kClamp);
        }
      }
    }
    __syncthreads();  // every MMA reading buffer c & 1 is done, in every warpgroup: the buffer may be refilled
    load_chunk(c + 2);
    cp_async_commit();
  }
  cp_async_wait<0>();
#pragma unroll
  for (int j = 0; j < Cfg::FRAGS; ++j) fence_accumulators(acc[j]);
  __syncthreads();

  // m64 row 16 wi + lane/4 of wgmma j is the warp's column 16 (first + j) + lane/4 of its 64-column tile.
  finish_wgmma_tile<T, Cfg>(smem, p, acc, (tile64 - n_tile * (Cfg::TN / 64)) * 64 + 16 * first);
#else
  __trap();  // not an sm_90a build: the host never launches this (launch_stream_wgmma_with_config)
#endif
}

}  // namespace nvfp4
