// Decode W4A16 NVFP4 GEMM (8 or 16 rows of A per CTA, built for M <= 8 / 16): the weight stream goes from global
// memory straight into registers.
//
// At decode M the GEMM only has to stream the FP4 weights at the memory bandwidth, and the tiled kernel
// (gemm_kernel.cuh) spends its issue slots elsewhere: ncu on an H200, 28672 x 4096 at M = 1, showed 0.61
// warp instructions issued per scheduler cycle for 1.94 TB/s (40% of DRAM peak; cuBLAS BF16 streams 4.1 TB/s
// at 0.09), i.e. ~170 instructions per warp per 512-byte k16 step: the cp.async plan, the shared-memory
// round trip, a barrier per stage. Here a warp owns 64 columns and every WARPS_K-th k16 step of the CTA's K
// range and keeps STEPS k16 steps of loads in flight in registers: per step one 16-byte weight load, one
// 8-byte scale-code load and two 4-byte activation loads per 8 rows (row lane/4 of x: the B fragment of X^T), then the
// tiled kernel's dequantization (dequant_k16) with the weights as the MMA's A
// operand. No shared memory and no barrier until the end, where split-K and the epilogue are the tiled
// kernel's (store_tile), on 8- or 16-row tiles of which rows >= M are never stored.
#pragma once

#include <type_traits>

#include "gemm_kernel.cuh"

namespace nvfp4 {

template <int WARPS_N_, int WARPS_K_, int STEPS_, int MIN_BLOCKS_, int GROUPS_ = 1, bool X_BLOCKS_ = false>
struct GemvConfig {
  static constexpr int MB = 1;
  static constexpr int WARPS_M = 1;
  static constexpr int WARPS_N = WARPS_N_;
  static constexpr int WARPS_K = WARPS_K_;
  static constexpr int STEPS = STEPS_;  // k16 steps of loads in flight per warp
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int THREADS = 32 * WARPS_N * WARPS_K;
  // Rows of x per m-tile (blockIdx.y): GROUPS groups of 8, each the n8 operand of its own MMA with the same
  // dequantized weight fragment, so a second group costs MMAs and activation loads, not dequantization.
  static constexpr int GROUPS = GROUPS_;
  static constexpr int ROWS = 8 * GROUPS;
  static constexpr int TN = 64 * WARPS_N;
  static constexpr int C_STRIDE = TN + 8;
  static constexpr int C_BYTES = ROWS * C_STRIDE * 4;  // the CTA's FP32 tile (store_tile)
  // X_BLOCKS: a warp owns whole 4-step blocks of K and loads x a block at a time, coalesced, through a
  // 1 or 2 KB buffer of its own (see "x in blocks" in the kernel).
  static constexpr bool X_BLOCKS = X_BLOCKS_;
  static constexpr int X_BLOCK_BYTES = ROWS * 128;  // ROWS rows x 64 k
  static constexpr int SMEM_BYTES = C_BYTES + (X_BLOCKS ? THREADS / 32 * X_BLOCK_BYTES : 0);
  static_assert(!X_BLOCKS || ((GROUPS == 1 || GROUPS == 2) && STEPS == 4), "x in blocks: one block per ring turn");
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
__device__ __forceinline__ uint2 ld_stream_v2(const void* p) {
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
  constexpr bool kBlocks = Cfg::X_BLOCKS;
  int k16 = kb + wk;
  int steps = ke - kb - wk > 0 ? (ke - kb - wk + Cfg::WARPS_K - 1) / Cfg::WARPS_K : 0;
  if constexpr (kBlocks) {  // x in blocks: warp wk owns a contiguous run of whole 4-step blocks instead
    const int blocks = (ke - kb + 3) / 4;
    const int b0 = wk * blocks / Cfg::WARPS_K, b1 = (wk + 1) * blocks / Cfg::WARPS_K;
    k16 = kb + 4 * b0;
    steps = max(0, min(kb + 4 * b1, ke) - k16);
  }
  if (tile64 >= p.n_pad / 64) steps = 0;

  const int4* b_ptr = p.b + static_cast<int64_t>(k16) * (p.n_pad / 2) + tile64 * 32 + lane;
  const uint8_t* s_ptr = p.s + static_cast<int64_t>(k16) * p.n_pad + tile64 * 64 + (lane >> 2) * 8;
  // x row 8g + lane/4 of this tile for group g (the B fragment of X^T: k 2t, 2t+1 and 2t+8, 2t+9 with
  // t = lane % 4). Rows past M read row M-1 instead (always in bounds, finite): an output row depends only on
  // its own x row, and rows past M are never stored, so the loads need no predicate.
  auto x_row = [&](int g) { return static_cast<int64_t>(min(m_tile * Cfg::ROWS + 8 * g + (lane >> 2), p.m - 1)); };
  const uint32_t* a_ptr = reinterpret_cast<const uint32_t*>(static_cast<const T*>(p.a) + x_row(0) * p.lda +
                                                            k16 * 16 + 2 * (lane & 3));
  int64_t a_group[Cfg::GROUPS];  // group g's row relative to group 0's, in uint32 (0 for g = 0)
#pragma unroll
  for (int g = 0; g < Cfg::GROUPS; ++g) a_group[g] = g == 0 ? 0 : (x_row(g) - x_row(0)) * p.lda / 2;
  // 32-bit strides: advancing a pointer by one is a select and a 64-bit add, not two selects (N_pad < 2^28).
  constexpr int kStride = kBlocks ? 1 : Cfg::WARPS_K;  // k16 steps from one of the warp's steps to the next
  const int b_step = kStride * (p.n_pad / 2);
  const int s_step = kStride * p.n_pad;
  constexpr int a_step = Cfg::WARPS_K * 16 / 2;  // uint32 (two activations) per step

  // Ring of STEPS slots in registers. Loads are unconditional (no branch may separate a load from its slot,
  // or the compiler funnels the ring through copies that wait on the load): in the prologue and the last ring
  // turns the pointers stop advancing at this warp's last step, so the few loads past the end re-read that
  // step; in the turns before, they advance unconditionally (kAhead). A warp with no steps (tile past N_pad,
  // or no k16 steps in its slice) loads nothing.
  uint4 bq[Cfg::STEPS];
  uint2 sc[Cfg::STEPS];
  uint32_t a_lo[Cfg::STEPS][Cfg::GROUPS], a_hi[Cfg::STEPS][Cfg::GROUPS];
  int loaded = 0;  // loads issued, counted by the clamped loads (the steady turns leave it to their caller)
  auto load = [&](int slot, auto clamp) {
    bq[slot] = ld_stream_v4(b_ptr);
    sc[slot] = ld_stream_v2(s_ptr);
    if constexpr (!kBlocks) {
#pragma unroll
      for (int g = 0; g < Cfg::GROUPS; ++g) {
        a_lo[slot][g] = __ldg(a_ptr + a_group[g]);
        a_hi[slot][g] = __ldg(a_ptr + a_group[g] + 4);
      }
    }
    const bool advance = !decltype(clamp)::value || ++loaded < steps;
    b_ptr += advance ? b_step : 0;
    s_ptr += advance ? s_step : 0;
    if constexpr (!kBlocks) a_ptr += advance ? a_step : 0;
  };
  constexpr std::true_type kClamp{};
  constexpr std::false_type kAhead{};

  // The weights are the A operand (C^T = W X^T): one mma.m16n8k16 covers 16 output columns x 8 rows of x,
  // half the MMAs of the tiled kernel's orientation, whose 16 A rows would be 8 rows of x and 8 of zeros.
  // acc[g][w] holds out[m][n] for n = 16w + lane/4 (+ 8 for [2], [3]) and m = 8g + 2 (lane % 4) (+ 1 for [1],
  // [3]).
  float acc[Cfg::GROUPS][4][4];
#pragma unroll
  for (int g = 0; g < Cfg::GROUPS; ++g)
#pragma unroll
    for (int w = 0; w < 4; ++w)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[g][w][i] = 0.0f;

  // ---- x in blocks (X_BLOCKS) -----------------------------------------------------------------------------------
  // The per-step x loads above touch 8 rows each: 16 L1 wavefronts per k16 step per row group against ~5 for
  // the weights (docs/kernels.md "Ninth session"). Here a warp's steps are contiguous, so one 64-k block of x is
  // 128 bytes per row: 2 coalesced 16-byte loads per lane and row group (4 rows of 128 bytes each, 4
  // wavefronts), issued a ring turn ahead; at the turn they go to the warp's own buffer (128-byte rows, chunks
  // XOR-swizzled by row: conflict-free stores and ldmatrix) and each step takes its fragments with one
  // ldmatrix (.x4 for two row groups, .x2 for one). No barrier beyond __syncwarp.
  // Lane: row 4j + lane / 8 of the tile for load j (rows past M read row M - 1), chunk lane % 8 of the block.
  auto xb_row = [&](int j) { return static_cast<int64_t>(min(m_tile * Cfg::ROWS + 4 * j + (lane >> 3), p.m - 1)); };
  const T* xb_ptr = static_cast<const T*>(p.a) + xb_row(0) * p.lda + k16 * 16 + 8 * (lane & 7);
  constexpr int X_LOADS = 2 * Cfg::GROUPS;  // 16-byte loads per lane and block
  int xb_off[X_LOADS];                       // load j's row relative to load 0's, in elements
#pragma unroll
  for (int j = 0; j < X_LOADS; ++j) xb_off[j] = static_cast<int>((xb_row(j) - xb_row(0)) * p.lda);
  int xb_step = 0;  // the warp step at which the block xb_ptr points to starts
  uint4 xb[X_LOADS];
  uint8_t* x_buf = smem + Cfg::C_BYTES + warp * Cfg::X_BLOCK_BYTES;
  // Loads the block at xb_ptr and moves to the next one. Clamped: the pointer stays on the warp's last block,
  // and a chunk past K (the last block of the last split when K % 64 != 0) reads its row's start instead.
  auto load_x_block = [&](auto clamp) {
    const int col = (k16 + xb_step) * 16 + 8 * (lane & 7);
#pragma unroll
    for (int j = 0; j < X_LOADS; ++j) {
      const T* ptr = xb_ptr + xb_off[j];
      if constexpr (decltype(clamp)::value) ptr = col < p.k ? ptr : ptr - col;
      xb[j] = __ldg(reinterpret_cast<const uint4*>(ptr));  // L1: the CTA's column warps share it
    }
    const bool advance = !decltype(clamp)::value || xb_step + 4 < steps;
    xb_ptr += advance ? 64 : 0;
    xb_step += advance ? 4 : 0;
  };
  auto store_x_block = [&]() {
    __syncwarp();  // every lane's ldmatrix of the previous block is done
#pragma unroll
    for (int j = 0; j < X_LOADS; ++j) {
      const int row = 4 * j + (lane >> 3);
      *reinterpret_cast<uint4*>(x_buf + row * 128 + (((lane & 7) ^ (row & 7)) * 16)) = xb[j];
    }
    __syncwarp();
  };
  // ldmatrix rows: matrix lane / 8 = (row group, k half); chunk 2 (step in block) + half of row r. With one
  // row group (.x2) lanes 16..31 address nothing: they repeat group 0's rows.
  const int ld_row = (lane & 7) + (Cfg::GROUPS == 2 ? 8 * (lane >> 4) : 0), ld_half = (lane >> 3) & 1;

  auto compute = [&](int u) {
    uint32_t x_frag[Cfg::GROUPS][2];  // B fragments of X^T: k 2t.. and 2t+8.. of row 8g + lane/4
    if constexpr (kBlocks) {
      const uint8_t* row_chunk = x_buf + ld_row * 128 + (((2 * (u % 4) + ld_half) ^ (ld_row & 7)) * 16);
      if constexpr (Cfg::GROUPS == 2) {
        uint32_t r[4];
        ldmatrix_x4(r, row_chunk);
        x_frag[0][0] = r[0], x_frag[0][1] = r[1], x_frag[1][0] = r[2], x_frag[1][1] = r[3];
      } else {
        ldmatrix_x2(x_frag[0], row_chunk);
      }
    } else {
#pragma unroll
      for (int g = 0; g < Cfg::GROUPS; ++g) x_frag[g][0] = a_lo[u][g], x_frag[g][1] = a_hi[u][g];
    }
    dequant_k16<T>(bq[u], sc[u], [&](int w, const uint32_t (&b_lo)[2], const uint32_t (&b_hi)[2]) {
      const uint32_t w_frag[4] = {b_lo[0], b_hi[0], b_lo[1], b_hi[1]};  // rows: columns 16w.. and 16w+8..
#pragma unroll
      for (int g = 0; g < Cfg::GROUPS; ++g) Dtype<T>::mma(acc[g][w], w_frag, x_frag[g]);
    });
  };

  if (steps > 0) {
#pragma unroll
    for (int u = 0; u < Cfg::STEPS; ++u) load(u, kClamp);
    if constexpr (kBlocks) load_x_block(kClamp);
    // x in blocks: a ring turn starts by storing its block (loaded the turn before) and loading the next.
    auto x_turn = [&](auto clamp) {
      if constexpr (kBlocks) {
        store_x_block();
        load_x_block(clamp);
      }
    };
    int base = 0;
    // Steady state: this turn computes steps base .. base + STEPS - 1 and loads the next STEPS, all before the
    // last step, so no step needs a guard and no pointer a clamp (~6 fewer instructions per step). Strictly
    // before: a turn whose loads end on the last step would leave the pointers one step past it, where the
    // clamped turn after it reads (past the end of the tensors for the last split; scripts/memcheck_kernels.py).
    for (; base + 2 * Cfg::STEPS < steps; base += Cfg::STEPS) {
      x_turn(kAhead);
#pragma unroll
      for (int u = 0; u < Cfg::STEPS; ++u) {
        compute(u);
        load(u, kAhead);
      }
    }
    loaded = base + Cfg::STEPS;  // the loads issued so far, as the clamped loads count them
    for (; base < steps; base += Cfg::STEPS) {
      x_turn(kClamp);
#pragma unroll
      for (int u = 0; u < Cfg::STEPS; ++u) {
        if (base + u < steps) compute(u);
        load(u, kClamp);
      }
    }
  }

  // k-warps -> the CTA's [ROWS, TN] FP32 tile in shared memory (warp order), then store_tile.
  float* c_sh = reinterpret_cast<float*>(smem);
  reduce_k_warps<Cfg>(wk, [&](bool accumulate) {
#pragma unroll
    for (int g = 0; g < Cfg::GROUPS; ++g)
#pragma unroll
      for (int w = 0; w < 4; ++w)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int m = 8 * g + 2 * (lane & 3) + (i & 1);
          const int n = wn * 64 + 16 * w + (lane >> 2) + 8 * (i >> 1);
          float* dst = &c_sh[m * Cfg::C_STRIDE + n];
          *dst = accumulate ? *dst + acc[g][w][i] : acc[g][w][i];
        }
  });
  auto routed_id = [&](int r) -> int64_t { return r < p.m ? r : -1; };
  store_tile<T, Cfg, false>(smem, p, p.global_scale, m_tile, n_tile, split, routed_id);
}

}  // namespace nvfp4
