// Dense W4A16 NVFP4 GEMM, Marlin style: C[M, N] = (A[M, K] @ deq(B)[K, N]) * global_scale (+ bias).
//
// One CTA (8 warps) computes a ROWS x TN output tile over a range of K tiles (its split):
//   - a STAGES-deep cp.async pipeline brings A (ROWS x TK, XOR-swizzled 16-byte chunks), B (TK/16 rows of
//     TN/64 weight tiles, 512 B each) and the scale codes (TK/16 x TN bytes) into shared memory;
//   - warp (wn, wk) owns the 64 columns wn*64.. and the k16 steps j = wk, wk + WARPS_K, ... of every stage:
//     ldmatrix for A, one 16-byte load of weights and one 8-byte load of scale codes per lane, dequantized in
//     registers (dequant.cuh) straight into mma.m16n8k16 B fragments, FP32 accumulation;
//   - the WARPS_K partial sums are added in shared memory in a fixed order; with split-K either the splits of a
//     tile are one thread-block cluster (Hopper, <= 8 splits) and each CTA adds one slice of the tile over all
//     the CTAs' shared memory, or each CTA writes its FP32 tile to a workspace slot and the last CTA of the tile
//     to arrive (an atomic counter, which it resets to 0) adds the slots; both add in split order, so results
//     are deterministic and the same either way;
//   - epilogue: acc * (global_scale * 2^7) (+ bias) in FP32, one rounding, 16-byte stores when N % 8 == 0;
//     global_scale is one value or one per column (merged sibling linears).
// A rows beyond M and K columns beyond size_k are zero-filled by cp.async, B/scale rows and tiles beyond the
// padded sizes likewise, so nothing outside the tensors is read.
//
// The tile loop (load_next / compute_stage / reduce) only sees row pointers and B/scale bases, so a MoE
// variant can gather A rows through an index array and offset B/scales per expert.
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include <cooperative_groups.h>
#endif

#include "dequant.cuh"
#include "ptx.cuh"
#include "split_k.cuh"

namespace nvfp4 {

// Grouped (MoE) variant, marlin_gemm_kernel<T, Cfg, true>: m-tile t computes expert tile_expert[t]; tiles at
// or past *num_padded rows exit at once. Row r of tile t is the routed row id = sorted_ids[t * ROWS + r]; an id
// >= num_ids is padding (not loaded, not stored). A row = id / a_row_div, C row = id; B, scales and the global
// scale advance by one expert stride per expert index.
struct MarlinMoeParams {
  const int* sorted_ids;
  const int* tile_expert;
  const int* num_padded;  // device scalar (no host sync: the grid is sized for the worst case)
  int num_ids;
  int a_row_div;
  int64_t b_stride;  // int4 per expert
  int64_t s_stride;  // scale bytes per expert
};

struct MarlinGemmParams {
  const void* a;  // [m, k] row-major, row stride lda elements, 16-byte aligned rows
  int64_t lda;
  const int4* b;              // qweight int32 [k_pad/16, 2*n_pad]
  const uint8_t* s;           // scale codes [k_pad/16, n_pad]
  const float* global_scale;  // FP32 decode scale(s) in device memory (no host sync, graph safe)
  int gs_per_column;          // 0: one scale; 1: one per output column (sibling linears merged along N)
  const void* bias;           // [n] in the activation dtype, or nullptr
  void* c;                    // [m, n] row-major, row stride ldc
  int64_t ldc;
  float* partials;  // split-K workspace: [splits, m_tiles * n_tiles, ROWS * TN] FP32 (splits > 1 only)
  int* counters;    // [m_tiles * n_tiles] zero on entry; the last CTA of a tile resets its counter
  int m, n, k;      // logical sizes
  int n_pad, k_pad;
  int m_tiles, n_tiles, k_tiles, splits;
  int cluster_splits;  // 1: launched with cluster dims (1, 1, splits), no workspace (store_tile); Hopper only
  MarlinMoeParams moe;  // read only by the kMoe instantiation (csrc/moe/); zero for the dense GEMM
};

// MB m16 blocks per warp; WARPS_M x WARPS_N x WARPS_K warps: a warp owns MB*16 rows (of WARPS_M row groups),
// 64 columns (of TN) and every WARPS_K-th k16 step of each stage.
template <int MB_, int WARPS_M_, int TN_, int TK_, int STAGES_, int THREADS_, int MIN_BLOCKS_>
struct GemmConfig {
  static constexpr int MB = MB_;
  static constexpr int WARPS_M = WARPS_M_;
  static constexpr int TN = TN_;
  static constexpr int TK = TK_;
  static constexpr int STAGES = STAGES_;
  static constexpr int THREADS = THREADS_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int WARPS = THREADS / 32;
  static constexpr int WARPS_N = TN / 64;
  static constexpr int WARPS_K = WARPS / (WARPS_M * WARPS_N);
  static constexpr int ROWS = WARPS_M * MB * 16;
  static constexpr int K16 = TK / 16;  // k16 steps (= scale blocks) per stage
  static constexpr int K16_PER_WARP = K16 / WARPS_K;
  static constexpr int A_CHUNKS = TK / 8;  // 16-byte chunks per A row
  static constexpr int A_BYTES = ROWS * TK * 2;
  static constexpr int B_BYTES = K16 * TN * 8;  // TN/64 tiles of 512 B per k16 row
  static constexpr int S_BYTES = K16 * TN;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES + S_BYTES;
  static constexpr int C_STRIDE = TN + 8;  // FP32 tile row stride: conflict-free float2 fragment stores
  static constexpr int C_BYTES = ROWS * C_STRIDE * 4;
  static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES > C_BYTES ? STAGES * STAGE_BYTES : C_BYTES;
  static_assert(TN % 64 == 0 && WARPS % (WARPS_M * WARPS_N) == 0, "whole warps of 64 columns");
  static_assert(WARPS_K >= 1 && K16 % WARPS_K == 0, "each warp must get the same number of k16 steps");
  static_assert(TK % 64 == 0 && A_CHUNKS >= 8, "the A swizzle XORs 3 bits of the chunk index");
  static_assert((ROWS * A_CHUNKS) % THREADS == 0, "whole loader rounds");
};

// The weight half of a pipeline stage (the tiled kernels, mma.sync and wgmma): the K16 layout rows of the CTA's
// TN / 64 weight tiles (512 B per tile and row) and their K16 x TN scale codes, as 16-byte cp.async into
// [weights B_BYTES | scale codes]. Pointers and predicates are set up once and advanced one k-tile per load
// (k-tiles strictly in order); tiles >= N_pad are zero-filled, never read, and so are rows >= K_pad / 16 where a
// k-tile can run past K_pad (TK > 64; K_pad is a multiple of 64, so 64-wide k-tiles never do). With 64-wide
// k-tiles a zero-filled copy keeps an in-bounds source address (its row's first tile), so the loads need neither
// a per-load row check nor a select of the address (wg64x512: 356 -> 331 instructions per main-loop pass).
template <class Cfg>
struct WeightStageLoader {
  static constexpr int B_ITERS = Cfg::K16 * Cfg::TN / 2 / Cfg::THREADS;
  static constexpr int S_CHUNKS = Cfg::K16 * Cfg::TN / 16;
  static constexpr bool kRowsCanRunPastK = Cfg::TK > 64;
  static_assert((Cfg::K16 * Cfg::TN / 2) % Cfg::THREADS == 0, "whole loader rounds");
  static_assert(S_CHUNKS <= Cfg::THREADS, "one 16-byte scale chunk per thread at most");

  const int4* b_base;
  const uint8_t* s_base;
  int64_t b_step, s_step;  // int4 / bytes per k-tile
  int k16_rows;
  const int4* b_src[B_ITERS];
  int b_k16[B_ITERS];
  bool b_tile_ok[B_ITERS];
  const uint8_t* s_src;
  int s_k16;
  bool s_ok;

  __device__ __forceinline__ WeightStageLoader(const MarlinGemmParams& p, const int4* b, const uint8_t* s, int n0,
                                               int kt_begin)
      : b_base(b), s_base(s), b_step(static_cast<int64_t>(Cfg::K16) * (p.n_pad / 2)),
        s_step(static_cast<int64_t>(Cfg::K16) * p.n_pad), k16_rows(p.k_pad / 16) {
    const int tid = threadIdx.x;
    const int n_tiles64 = p.n_pad / 64;
#pragma unroll
    for (int it = 0; it < B_ITERS; ++it) {
      const int i = tid + it * Cfg::THREADS;
      const int r = i / (Cfg::TN / 2), c = i % (Cfg::TN / 2);
      b_k16[it] = kt_begin * Cfg::K16 + r;
      b_tile_ok[it] = (n0 / 64 + c / 32) < n_tiles64;
      b_src[it] = b + static_cast<int64_t>(b_k16[it]) * (p.n_pad / 2) + (b_tile_ok[it] ? n0 / 2 + c : c % 32);
    }
    const int s_r = tid / (Cfg::TN / 16), s_c = tid % (Cfg::TN / 16);
    s_k16 = kt_begin * Cfg::K16 + s_r;
    s_ok = tid < S_CHUNKS && n0 + s_c * 16 < p.n_pad;
    s_src = s + static_cast<int64_t>(s_k16) * p.n_pad + (s_ok ? n0 + s_c * 16 : 0);
  }

  __device__ __forceinline__ void load(uint8_t* dst) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int it = 0; it < B_ITERS; ++it) {
      uint8_t* to = dst + (tid + it * Cfg::THREADS) * 16;
      if constexpr (kRowsCanRunPastK) {  // a row past K_pad: no address past the tensor, even unread
        const bool ok = b_tile_ok[it] && b_k16[it] < k16_rows;
        cp_async16(to, ok ? b_src[it] : b_base, ok);
        b_k16[it] += Cfg::K16;
      } else {
        cp_async16(to, b_src[it], b_tile_ok[it]);
      }
      b_src[it] += b_step;
    }
    if (tid < S_CHUNKS) {
      uint8_t* to = dst + Cfg::B_BYTES + tid * 16;
      if constexpr (kRowsCanRunPastK) {
        const bool ok = s_ok && s_k16 < k16_rows;
        cp_async16(to, ok ? s_src : s_base, ok);
        s_k16 += Cfg::K16;
      } else {
        cp_async16(to, s_src, s_ok);
      }
      s_src += s_step;
    }
  }
};

// One k16 step (one scale block) of a warp: 16 x 64 weights (one 16-byte int4 per lane: 4 int32 of code
// pairs) and their 8-byte scale codes dequantized in registers into the B fragments of n8 tiles 2w, 2w+1 (w =
// 0..3), handed to mma(w, b_lo, b_hi).
template <typename T, class Mma>
__device__ __forceinline__ void dequant_k16(const uint4 bq, const uint2 sc, Mma mma) {
  const uint32_t q[4] = {bq.x, bq.y, bq.z, bq.w};
  const uint32_t s2[4] = {scale_pair_at<T>(sc.x, 0), scale_pair_at<T>(sc.x, 2), scale_pair_at<T>(sc.y, 0),
                          scale_pair_at<T>(sc.y, 2)};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    uint32_t b_lo[2], b_hi[2];
    dequant_int32<T>(q[w], s2[w], b_lo, b_hi);
    mma(w, b_lo, b_hi);
  }
}

// The tiled kernels' k16 step: the dequantized weights as B operand, times MB m16 A fragments.
template <typename T, int MB>
__device__ __forceinline__ void mma_k16(float (&acc)[MB][8][4], const uint32_t (&a)[MB][4], const uint4 bq,
                                        const uint2 sc) {
  dequant_k16<T>(bq, sc, [&](int w, const uint32_t (&b_lo)[2], const uint32_t (&b_hi)[2]) {
#pragma unroll
    for (int mb = 0; mb < MB; ++mb) {
      Dtype<T>::mma(acc[mb][2 * w], a[mb], b_lo);
      Dtype<T>::mma(acc[mb][2 * w + 1], a[mb], b_hi);
    }
  });
}

// Adds the WARPS_K warps' partial tiles in shared memory in warp order (deterministic): warp wk calls
// write(accumulate) in round wk, accumulate = false for the first.
template <class Cfg, class Write>
__device__ __forceinline__ void reduce_k_warps(int wk, Write write) {
#pragma unroll 1
  for (int r = 0; r < Cfg::WARPS_K; ++r) {
    if (wk == r) write(r > 0);
    __syncthreads();
  }
}

// Unit i (4 columns) of the CTA's FP32 tile in shared memory, row stride C_STRIDE.
template <class Cfg>
__device__ __forceinline__ float4* tile_unit(float* c_sh, int i) {
  return reinterpret_cast<float4*>(c_sh + (i / (Cfg::TN / 4)) * Cfg::C_STRIDE + (i % (Cfg::TN / 4)) * 4);
}

// Split-K across the CTAs of one cluster (cluster dims (1, 1, splits), so a CTA's rank is its split): after a
// cluster barrier each CTA adds its slice [begin, end) of the tile's 4-column units over every CTA's shared
// memory (distributed shared memory), in split order, into its own shared tile; a second barrier keeps every
// CTA resident until no other reads its shared memory. No FP32 partials through L2 and no serial fix-up by a
// last CTA (H200, 8192 x 8192 at M = 256: 63.9 instead of 77.7 us, docs/kernels.md "Split-K").
template <class Cfg>
__device__ __forceinline__ void sum_splits_in_cluster(float* c_sh, int splits, int begin, int end) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  cluster.sync();  // release/acquire: every split's tile is in its shared memory
  sum_splits_in_order<Cfg>(
      threadIdx.x, begin, end, splits,
      [&](int s, int i) { return *cluster.map_shared_rank(tile_unit<Cfg>(c_sh, i), s); },
      // only this CTA's slice: nobody else reads it
      [&](int i, float4 sum) { *tile_unit<Cfg>(c_sh, i) = sum; });
  cluster.sync();
#else
  __trap();  // clusters need sm_90: the host enables them on compute capability 9.0 only
#endif
}

// The end of every CTA once its FP32 tile is in shared memory (smem, row stride C_STRIDE): with split-K the
// splits are added in split order (deterministic), in the cluster (each CTA then stores its slice) or by the
// last CTA of the tile to arrive (which stores all of it); then tile * global_scale * 2^7 (+ bias), one
// rounding. routed_id(row) gives the C row of tile row `row` (-1: not stored).
template <typename T, class Cfg, bool kMoe, class RoutedId>
__device__ __forceinline__ void store_tile(uint8_t* smem, const MarlinGemmParams& p, const float* gs_ptr, int m_tile,
                                           int n_tile, int split, RoutedId routed_id) {
  using D = Dtype<T>;
  __shared__ int tile_is_last;
  const int tid = threadIdx.x;
  const int m0 = m_tile * Cfg::ROWS;
  const int n0 = n_tile * Cfg::TN;
  float* c_sh = reinterpret_cast<float*>(smem);
  const int rows = min(Cfg::ROWS, p.m - m0);
  constexpr int TN4 = Cfg::TN / 4;
  constexpr int TN8 = Cfg::TN / 8;
  int unit_begin = 0, unit_end = rows * TN8;  // the 8-column units of the tile this CTA stores

  if (p.splits > 1 && p.cluster_splits) {
    unit_begin = static_cast<int>(static_cast<int64_t>(split) * unit_end / p.splits);
    unit_end = static_cast<int>(static_cast<int64_t>(split + 1) * unit_end / p.splits);
    sum_splits_in_cluster<Cfg>(c_sh, p.splits, 2 * unit_begin, 2 * unit_end);
  } else if (p.splits > 1) {
    // ---- split-K by workspace: publish this split's tile; the last CTA to arrive sums all splits in order
    const int tile = m_tile * p.n_tiles + n_tile;
    constexpr int64_t kTileElems = Cfg::ROWS * Cfg::TN;
    const int64_t num_tiles = static_cast<int64_t>(p.m_tiles) * p.n_tiles;
    // split s's tile: kTileElems floats, unit i at slot(s) + i (rows of TN, no padding)
    auto slot = [&](int s) { return reinterpret_cast<float4*>(p.partials + (s * num_tiles + tile) * kTileElems); };
    for (int i = tid; i < rows * TN4; i += Cfg::THREADS) __stcg(slot(split) + i, *tile_unit<Cfg>(c_sh, i));
    __threadfence();
    __syncthreads();
    if (tid == 0) {
      const int arrived = atomicAdd(&p.counters[tile], 1);
      tile_is_last = arrived == p.splits - 1;
      if (tile_is_last) p.counters[tile] = 0;  // every other split has arrived: reusable, graph safe
    }
    __syncthreads();
    if (!tile_is_last) return;
    __threadfence();
    sum_splits_in_order<Cfg>(
        tid, 0, rows * TN4, p.splits,
        [&](int s, int i) { return s == split ? *tile_unit<Cfg>(c_sh, i) : __ldcg(slot(s) + i); },
        [&](int i, float4 sum) { *tile_unit<Cfg>(c_sh, i) = sum; });
    __syncthreads();
  }

  // ---- epilogue: FP32 scale (+ bias), one rounding, 16-byte stores --------------------------------------
  const float factor = p.gs_per_column ? kEpilogueFactor : __ldg(gs_ptr) * kEpilogueFactor;
  auto column_factor = [&](int c) { return p.gs_per_column ? __ldg(gs_ptr + c) * factor : factor; };
  const T* bias = static_cast<const T*>(p.bias);
  T* c_out = static_cast<T*>(p.c);
  const bool vector_store = (p.n % 8) == 0 && (p.ldc % 8) == 0;
  for (int i = unit_begin + tid; i < unit_end; i += Cfg::THREADS) {
    const int r = i / TN8, c = (i % TN8) * 8;
    const int col = n0 + c;
    if (col >= p.n) continue;
    const float4 lo = *reinterpret_cast<const float4*>(&c_sh[r * Cfg::C_STRIDE + c]);
    const float4 hi = *reinterpret_cast<const float4*>(&c_sh[r * Cfg::C_STRIDE + c + 4]);
    float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    const int64_t c_row = kMoe ? routed_id(m0 + r) : m0 + r;
    if (c_row < 0) continue;
    T* dst = c_out + c_row * p.ldc + col;
    if (vector_store) {
      __align__(16) T out[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        float x = v[e] * column_factor(col + e);
        if (bias != nullptr) x += D::to_float(bias[col + e]);
        out[e] = D::from_float(x);
      }
      *reinterpret_cast<int4*>(dst) = *reinterpret_cast<const int4*>(out);
    } else {
      for (int e = 0; e < 8 && col + e < p.n; ++e) {
        float x = v[e] * column_factor(col + e);
        if (bias != nullptr) x += D::to_float(bias[col + e]);
        dst[e] = D::from_float(x);
      }
    }
  }
}


// The tiled kernels' end: the warps' accumulators (rows warp_row0.., columns wn*64.., k-slice wk) are added in
// shared memory in warp order, then store_tile.
template <typename T, class Cfg, bool kMoe, class RoutedId>
__device__ __forceinline__ void finish_tile(float (&acc)[Cfg::MB][8][4], uint8_t* smem, const MarlinGemmParams& p,
                                            const float* gs_ptr, int m_tile, int n_tile, int split, int warp_row0,
                                            int wn, int wk, RoutedId routed_id) {
  const int lane = threadIdx.x & 31;
  float* c_sh = reinterpret_cast<float*>(smem);
  reduce_k_warps<Cfg>(wk, [&](bool accumulate) {
#pragma unroll
    for (int mb = 0; mb < Cfg::MB; ++mb)
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = warp_row0 + mb * 16 + (lane >> 2) + 8 * h;
          const int col = wn * 64 + nt * 8 + 2 * (lane & 3);
          float2* dst = reinterpret_cast<float2*>(&c_sh[row * Cfg::C_STRIDE + col]);
          float2 v = make_float2(acc[mb][nt][2 * h], acc[mb][nt][2 * h + 1]);
          if (accumulate) {
            const float2 o = *dst;
            v.x += o.x;
            v.y += o.y;
          }
          *dst = v;
        }
  });
  store_tile<T, Cfg, kMoe>(smem, p, gs_ptr, m_tile, n_tile, split, routed_id);
}

template <typename T, class Cfg, bool kMoe = false>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS) marlin_gemm_kernel(const MarlinGemmParams p) {
  extern __shared__ __align__(16) uint8_t smem[];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wn = warp % Cfg::WARPS_N;
  const int wm = (warp / Cfg::WARPS_N) % Cfg::WARPS_M;
  const int wk = warp / (Cfg::WARPS_N * Cfg::WARPS_M);
  const int warp_row0 = wm * Cfg::MB * 16;

  const int n_tile = blockIdx.x, m_tile = blockIdx.y, split = blockIdx.z;
  const int m0 = m_tile * Cfg::ROWS;
  // Operand bases: the dense GEMM's, or (MoE) those of this m-tile's expert; MoE tiles past the routed rows
  // exit here, before any split touches the split-K counters.
  const int4* b_base = p.b;
  const uint8_t* s_base = p.s;
  const float* gs_ptr = p.global_scale;
  if constexpr (kMoe) {
    if (m0 >= __ldg(p.moe.num_padded)) return;
    const int expert = __ldg(p.moe.tile_expert + m_tile);
    b_base += expert * p.moe.b_stride;
    s_base += expert * p.moe.s_stride;
    gs_ptr += expert;
  }
  // The row of A feeding tile row `row` and the row of C it is stored to; -1: none (beyond M, or MoE padding).
  auto routed_id = [&](int row) -> int64_t {
    if constexpr (kMoe) {
      const int id = __ldg(p.moe.sorted_ids + row);
      return id < p.moe.num_ids ? id : -1;
    } else {
      return row < p.m ? row : -1;
    }
  };
  const int n0 = n_tile * Cfg::TN;
  const int kt_begin = static_cast<int>(static_cast<int64_t>(split) * p.k_tiles / p.splits);
  const int kt_end = static_cast<int>(static_cast<int64_t>(split + 1) * p.k_tiles / p.splits);
  const int num_k = kt_end - kt_begin;

  const T* a_base = static_cast<const T*>(p.a);

  // ---- load plan (all threads): fixed shared-memory offsets, global pointers set up once and advanced one
  // k-tile per load, so a stage costs a handful of adds and predicates besides the cp.async themselves.
  // A rows that feed nothing (beyond M, MoE padding) are not loaded: an MMA row depends only on its own A
  // row and those rows are never stored. Columns >= K of live rows, B rows >= K_pad and tiles >= N_pad are
  // zero-filled (the padded weights are zero, and 0 * garbage could be NaN).
  constexpr int A_ITERS = Cfg::ROWS * Cfg::A_CHUNKS / Cfg::THREADS;
  const T* a_src[A_ITERS];
  int a_col[A_ITERS];
  uint32_t a_dst[A_ITERS];
#pragma unroll
  for (int it = 0; it < A_ITERS; ++it) {
    const int i = tid + it * Cfg::THREADS;
    const int r = i / Cfg::A_CHUNKS, c = i % Cfg::A_CHUNKS;
    const int64_t id = routed_id(m0 + r);
    const int64_t a_row = kMoe ? static_cast<int>(id) / p.moe.a_row_div : id;
    a_col[it] = kt_begin * Cfg::TK + c * 8;
    a_src[it] = id >= 0 ? a_base + a_row * p.lda + a_col[it] : nullptr;
    a_dst[it] = (r * Cfg::A_CHUNKS + (c ^ (r & 7))) * 16;
  }
  WeightStageLoader<Cfg> weights(p, b_base, s_base, n0, kt_begin);

  // Loads the next k-tile (k-tiles are loaded strictly in order) into `stage`.
  auto load_next = [&](int stage) {
    uint8_t* base = smem + stage * Cfg::STAGE_BYTES;
#pragma unroll
    for (int it = 0; it < A_ITERS; ++it) {
      if (a_src[it] != nullptr) {
        const bool ok = a_col[it] < p.k;
        cp_async16(base + a_dst[it], ok ? a_src[it] : a_base, ok);
        a_src[it] += Cfg::TK;
        a_col[it] += Cfg::TK;
      }
    }
    weights.load(base + Cfg::A_BYTES);
  };

  float acc[Cfg::MB][8][4];
#pragma unroll
  for (int mb = 0; mb < Cfg::MB; ++mb)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mb][nt][i] = 0.0f;

  // ---- math of one stage (each warp: its rows, its 64 columns, its k16 steps) ------------------------
  // Fragments of step jj+1 are loaded before the MMAs of step jj (double buffering in registers).
  auto compute_stage = [&](int stage) {
    const uint8_t* base = smem + stage * Cfg::STAGE_BYTES;
    const int4* a_sh = reinterpret_cast<const int4*>(base);
    const uint4* b_sh = reinterpret_cast<const uint4*>(base + Cfg::A_BYTES);
    const uint8_t* s_sh = base + Cfg::A_BYTES + Cfg::B_BYTES;
    uint32_t a[2][Cfg::MB][4];
    uint4 bq[2];
    uint2 sc[2];
    auto load_frags = [&](int buf, int jj) {
      const int j = jj * Cfg::WARPS_K + wk;
#pragma unroll
      for (int mb = 0; mb < Cfg::MB; ++mb) {
        const int r = warp_row0 + mb * 16 + (lane & 15);
        const int c = 2 * j + (lane >> 4);
        ldmatrix_x4(a[buf][mb], &a_sh[r * Cfg::A_CHUNKS + (c ^ (r & 7))]);
      }
      bq[buf] = b_sh[j * (Cfg::TN / 2) + wn * 32 + lane];
      sc[buf] = *reinterpret_cast<const uint2*>(s_sh + j * Cfg::TN + wn * 64 + (lane >> 2) * 8);
    };
    load_frags(0, 0);
#pragma unroll
    for (int jj = 0; jj < Cfg::K16_PER_WARP; ++jj) {
      const int cur = jj & 1;
      if (jj + 1 < Cfg::K16_PER_WARP) load_frags(cur ^ 1, jj + 1);
      mma_k16<T, Cfg::MB>(acc, a[cur], bq[cur], sc[cur]);
    }
  };

  // ---- pipelined main loop ----------------------------------------------------------------------------
#pragma unroll
  for (int s = 0; s < Cfg::STAGES - 1; ++s) {
    if (s < num_k) load_next(s);
    cp_async_commit();
  }
  for (int i = 0; i < num_k; ++i) {
    cp_async_wait<Cfg::STAGES - 2>();
    __syncthreads();  // stage i landed for everyone; stage i-1 (overwritten next) is no longer read
    const int next = i + Cfg::STAGES - 1;
    if (next < num_k) load_next(next % Cfg::STAGES);
    cp_async_commit();
    compute_stage(i % Cfg::STAGES);
  }
  cp_async_wait<0>();
  __syncthreads();

  finish_tile<T, Cfg, kMoe>(acc, smem, p, gs_ptr, m_tile, n_tile, split, warp_row0, wn, wk, routed_id);
}

}  // namespace nvfp4
