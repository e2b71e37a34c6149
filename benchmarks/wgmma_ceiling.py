"""Tensor-pipe ceiling of the wgmma form the W4A16 kernel uses, without the kernel around it.

The wgmma kernel (csrc/marlin/wgmma_kernel.cuh) computes C^T = W X^T with `wgmma.m64nNk16` whose A operand (64
weight columns) comes from registers and whose B operand (N = rows of x) comes from shared memory; per k16 step a
warpgroup issues FRAGS of them as one group, commits, and waits until only that group is in flight. At M = 64
(N = 64) wg64x512 spends 397 cycles per k16 step against 256 of tensor work (docs/kernels.md "Eleventh session"),
and removing a fifth of its ALU work did not change its time ("Twelfth session"). This measures the same
instruction pattern with nothing else in the loop: no loads, no dequantization (or, with `touch`, one dependent
ALU op per A register per step, as a dequantized fragment would be written), one warpgroup-synchronous group of
FRAGS MMAs per step, `wait_group 1`, on every SM.

Thirteenth session (docs/kernels.md): n64 runs at the n256 rate, so the tensor pipe alone is not the cap, and in
the kernel the warps almost never wait for their MMAs. Next question: does a register-A MMA in flight slow the
warps' own ALU work (operand reads from the register file competing with the dequantization's)? The `alu` /
`fma` cases add, per warp and k16 step, the kernel's dequantization volume (`alu` LOP3 on the ALU pipe, `fma`
bf16x2 multiplies on the FMA pipe: 16 independent chains, like a step's 16 output registers), either
independent of the MMAs or feeding their A registers (`feed`). Controls: the same load with A read from shared
memory (`ss`, nothing read from registers by the tensor cores) and with no MMA at all (`mma` off: the ALU work's
own time). If `n64 + load` stays near 256 cycles per step, the load overlaps and the kernel's loss is elsewhere;
if it lands near the kernel's ~400 while the `ss` control stays near 256, the register-A operand is the cost.

Fourteenth session: the shared-memory control runs as slow as register A, so the operand is not the cost; beside
the MMAs about 100 cycles per step of the warps' own pipe work are free whatever the kind (16 LOP3, IMAD, funnel
shifts or PRMT each cost nothing), and beyond that volume each cycle costs nearly one; 64-bit results (IMAD.WIDE)
cost far more than their pipe time.

Fifteenth session: bank-conflicted weight loads cost the MMAs 2-3%. The stage copies are what the MMAs meet: the
bytes of a k-tile landing in shared memory (cp.async by every thread or bulk copies by one, about the same) take
wg256x128's pattern from 256 to 336 cycles per step and wg64x512's with its load from 356 to ~500, which is the
kernel's own pace at M = 64 (docs/kernels.md "Fifteenth session"). Not the barrier, and not in proportion to
the bytes; the weights' bytes loaded straight into registers instead cost less (445 with x's copies).

    python3 benchmarks/wgmma_ceiling.py [--cases REGEX]   (needs an sm_90 GPU and nvcc; builds with torch's
                                                           cpp_extension; --cases: only those, faster to build)

Prints per case: TFLOP/s over the SMs it runs on, the share per SM of the n256 case's, and cycles per k16 step per SM
sub-partition (clock64 in the kernel, averaged over CTAs), against the tensor cycles the step holds at full rate.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Case = collections.namedtuple(
    "Case", "name n frags wg ctas touch depth alu fma feed ss mma split wide imad shf prmt lds lds_ways "
            "copies sync sms bulk nobar ldg",
    defaults=(False, 1, 0, 0, False, False, True, False, 0, 0, 0, 0, 0, 1, 0, False, 0, False, False, 0))
# cuda_source() instantiates the kernel for the chosen cases of this list. alu / fma / wide / imad / shf / prmt /
# lds: instructions per warp per k16 step (lds_ways: lanes per bank of each shared-memory load); the wg64x512 main
# loop issues about 36 on the ALU pipe and 26 on the FMA pipe per step (ncu, thirteenth session). copies: 16-byte
# cp.async per thread per 64-wide k-tile (4 steps), with the kernel's barrier per k-tile; sync: the barrier alone.
# sms: run on that many SMs (ctas CTAs each) instead of all. bulk: the same bytes as 4 bulk copies per k-tile (one
# thread issues them, an mbarrier per ring slot says they landed), not cp.async by every thread. nobar: the copies
# without the barrier (each thread waits for its own; nothing reads them, so nothing else needs it). ldg: 16-byte
# loads per thread per step from L2 straight into registers, 4 steps ahead, as the decode kernels take their weights.
CASES = [
    Case("n256 f1 wg2 (reference)", 256, 1, 2, 1),
    Case("n64 f4 wg2 (wg64x512)", 64, 4, 2, 1),
    Case("n64 f4 wg2, touch A", 64, 4, 2, 1, touch=True),
    Case("n64 f4 wg2 x2 CTAs (wg64x256)", 64, 2, 2, 2),
    Case("load alone (no MMA)", 64, 4, 2, 1, alu=36, fma=26, mma=False),
    Case("n64 f4 wg2 + load", 64, 4, 2, 1, alu=36, fma=26),
    Case("n64 f4 wg2 + load feeding A", 64, 4, 2, 1, alu=36, fma=26, feed=True),
    Case("n64 f4 wg2, A in smem + load", 64, 4, 2, 1, alu=36, fma=26, ss=True),
    Case("n256 f1 wg2 + load", 256, 1, 2, 1, alu=36, fma=26),
    Case("2x load alone (no MMA)", 64, 4, 2, 1, alu=72, fma=52, mma=False),
    Case("n64 f4 wg2 + 2x load", 64, 4, 2, 1, alu=72, fma=52),
    Case("n64 f4 wg2, A in smem + 2x load", 64, 4, 2, 1, alu=72, fma=52, ss=True),
    # Fourteenth session: which pipe of the load meets the MMAs, and whether more warps, a deeper MMA queue or
    # warpgroups with one role each (split: warpgroup 0 issues both warpgroups' MMAs, warpgroup 1 runs both
    # warpgroups' load; the same work per SM as "n64 f4 wg2 + load") restore the overlap.
    Case("alu alone (no MMA)", 64, 4, 2, 1, alu=36, mma=False),
    Case("fma alone (no MMA)", 64, 4, 2, 1, fma=26, mma=False),
    Case("n64 f4 wg2 + alu", 64, 4, 2, 1, alu=36),
    Case("n64 f4 wg2 + fma", 64, 4, 2, 1, fma=26),
    Case("n64 f2 wg4 + half load", 64, 2, 4, 1, alu=18, fma=13),
    Case("n64 f4 wg2 + load, 2 groups", 64, 4, 2, 1, depth=2, alu=36, fma=26),
    Case("n64 f4 split: MMA wg, load wg", 64, 4, 2, 1, alu=72, fma=52, split=True),
    Case("n64 f4 split, A in smem", 64, 4, 2, 1, alu=72, fma=52, ss=True, split=True),
    # The code pairs' two rotations per int32 as wide multiplies (FMA pipe) instead of funnel shifts (ALU pipe):
    # per warp and step 8 fewer ALU instructions, 8 IMAD.WIDE more (branch wip/imad-rotate).
    Case("wide multiplies alone (no MMA)", 64, 4, 2, 1, wide=8, mma=False),
    Case("n64 f4 wg2 + load, rotations as wide", 64, 4, 2, 1, alu=28, fma=26, wide=8),
    # What one instruction of each kind the dequantization could use costs under the MMAs: 16 per warp and step
    # (a step's 4 int32 x 4 code pairs), alone and beside wg64x512's MMAs (docs/kernels.md "Fourteenth session": the
    # load's 26 bf16x2 multiplies were free there, its 36 LOP3 and 8 IMAD.WIDE were not).
    Case("16 lop3 alone (no MMA)", 64, 4, 2, 1, alu=16, mma=False),
    Case("n64 f4 wg2 + 16 lop3", 64, 4, 2, 1, alu=16),
    Case("16 imad alone (no MMA)", 64, 4, 2, 1, imad=16, mma=False),
    Case("n64 f4 wg2 + 16 imad", 64, 4, 2, 1, imad=16),
    Case("16 funnel shifts alone (no MMA)", 64, 4, 2, 1, shf=16, mma=False),
    Case("n64 f4 wg2 + 16 funnel shifts", 64, 4, 2, 1, shf=16),
    Case("16 prmt alone (no MMA)", 64, 4, 2, 1, prmt=16, mma=False),
    Case("n64 f4 wg2 + 16 prmt", 64, 4, 2, 1, prmt=16),
    Case("n64 f4 wg2 + 8 wide multiplies", 64, 4, 2, 1, wide=8),
    # Do bank-conflicted weight loads slow the MMAs' own shared-memory reads? wg256x128 (n256, 1 fragment) and
    # wg64x128 (n64, 1 fragment, 2 CTAs) issue about 4 32-bit LDS per warp and step, each meeting 4 lanes per bank
    # (ncu, fourteenth session; branch wip/lds-lanes spreads them over all banks).
    Case("n256 f1 wg2 + 4 lds", 256, 1, 2, 1, lds=4),
    Case("n256 f1 wg2 + 4 lds, 4-way conflicts", 256, 1, 2, 1, lds=4, lds_ways=4),
    Case("n64 f1 wg2 x2 CTAs (wg64x128)", 64, 1, 2, 2),
    Case("n64 f1 wg2 x2 CTAs + 4 lds", 64, 1, 2, 2, lds=4),
    Case("n64 f1 wg2 x2 CTAs + 4 lds, 4-way conflicts", 64, 1, 2, 2, lds=4, lds_ways=4),
    # Fifteenth session: those conflicts cost the MMAs 2-3% (above), so they are not why wg256x128's MMAs run at
    # ~42% of this rate in the kernel. What else the kernel has around its MMAs: per k-tile a CTA barrier and the
    # stage copies from L2 (x 256 rows x 128 bytes, weights and scale codes: ~36.5 KB, 9 cp.async of 16 bytes per
    # thread; wg64x128: 64 rows, ~12.5 KB, 3), and per step its 1-fragment load (~9 ALU, ~7 FMA, 2 conflicted LDS).
    Case("stage copies alone (no MMA)", 256, 1, 2, 1, copies=9, mma=False),
    Case("n256 f1 wg2 + barrier per k-tile", 256, 1, 2, 1, sync=True),
    Case("n256 f1 wg2 + stage copies (wg256x128)", 256, 1, 2, 1, copies=9),
    Case("n256 f1 wg2 + stage copies + its load", 256, 1, 2, 1, copies=9, alu=9, fma=7, lds=2, lds_ways=4),
    Case("n64 f1 wg2 x2 CTAs + stage copies (wg64x128)", 64, 1, 2, 2, copies=3),
    # Is the copies' rate a limit of each SM's path from L2 or of L2 in all (which a multicast of the activation
    # tile to a cluster would relieve)? The same copies on a quarter and half of the SMs. And the other tiles'
    # copy volumes beside their MMAs: wg128x256 (x 16 KB + 9 KB: 6 per thread), wg64x512 (8 + 18 KB: 6, here
    # from L2, in the kernel the weights come from DRAM).
    Case("stage copies alone, 33 SMs", 256, 1, 2, 1, copies=9, mma=False, sms=33),
    Case("stage copies alone, 66 SMs", 256, 1, 2, 1, copies=9, mma=False, sms=66),
    Case("n256 f1 wg2 + stage copies, 66 SMs", 256, 1, 2, 1, copies=9, sms=66),
    Case("n128 f2 wg2 (wg128x256)", 128, 2, 2, 1),
    Case("n128 f2 wg2 + stage copies (wg128x256)", 128, 2, 2, 1, copies=6),
    Case("n64 f4 wg2 + load + stage copies (wg64x512)", 64, 4, 2, 1, alu=36, fma=26, copies=6),
    # Is it the copies' instructions in the MMA warps or their bytes? The same volumes as bulk copies.
    Case("stage bulk copies alone (no MMA)", 256, 1, 2, 1, copies=9, mma=False, bulk=True),
    Case("n256 f1 wg2 + stage bulk copies (wg256x128)", 256, 1, 2, 1, copies=9, bulk=True),
    Case("n64 f1 wg2 x2 CTAs + stage bulk copies (wg64x128)", 64, 1, 2, 2, copies=3, bulk=True),
    Case("n64 f4 wg2 + load + stage bulk copies (wg64x512)", 64, 4, 2, 1, alu=36, fma=26, copies=6, bulk=True),
    # The parts of wg64x512's step: its copies without the load, and the load with only the weights' bytes (16 of
    # their 18 KB: whole copies per thread) or only x's 8 KB.
    Case("n64 f4 wg2 + stage copies, no load (wg64x512)", 64, 4, 2, 1, copies=6),
    Case("n64 f4 wg2 + load + 16 KB weight copies (wg64x512)", 64, 4, 2, 1, alu=36, fma=26, copies=4),
    Case("n64 f4 wg2 + load + 8 KB x copies (wg64x512)", 64, 4, 2, 1, alu=36, fma=26, copies=2),
    # 16 KB of copies cost as much as 26 and 8 KB most of it: is it the barrier they come with?
    Case("n64 f4 wg2 + load + barrier per k-tile (wg64x512)", 64, 4, 2, 1, alu=36, fma=26, sync=True),
    Case("n64 f4 wg2 + load + stage copies, no barrier (wg64x512)", 64, 4, 2, 1, alu=36, fma=26, copies=6,
         nobar=True),
    Case("n256 f1 wg2 + stage copies, no barrier (wg256x128)", 256, 1, 2, 1, copies=9, nobar=True),
    # The other structure for the weights: straight into registers (the stream-wgmma kernel's), x alone through
    # shared memory. wg64x512's 16 KB of weights per k-tile are 1 load per thread and step.
    Case("weights by LDG alone (no MMA)", 64, 4, 2, 1, ldg=1, mma=False),
    Case("n64 f4 wg2 + load + weights by LDG (wg64x512)", 64, 4, 2, 1, alu=36, fma=26, ldg=1),
    Case("n64 f4 wg2 + load + weights by LDG + 8 KB x copies (wg64x512)", 64, 4, 2, 1, alu=36, fma=26, ldg=1,
         copies=2),
]

SOURCE = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include "marlin/wgmma.cuh"

namespace nvfp4 {

// B tile: N rows of 64 bf16 (one 128-byte swizzled row each); every k16 step reads its 32-byte column slice. With
// SS, a 64-row A tile of the same layout follows it and the MMAs read A from there instead of registers.
// The load L, per warp and k16 step, before the MMAs as the kernel's dequantization:
//   ALU / FMA: instructions on 16 registers v (lop3 with k ^ k: v unchanged; bf16x2 multiply by one: v unchanged,
//   so values stay finite); FEED: the A registers are v.
//   WIDE: 32 x 32 -> 64-bit multiplies (IMAD.WIDE.U32) into v and w; IMAD, SHF, PRMT: 32-bit multiply-adds,
//   funnel shifts, byte permutes on v (values arbitrary: none of these with FEED).
//   LDS: 32-bit shared-memory loads from the B tile (read only), lane l at word LDS_WAYS * l (LDS_WAYS lanes per
//   bank), into t.
// Per 64-wide k-tile (4 steps), as the kernel's stage pipeline: COPIES > 0: wait for the k-tile's copies, barrier,
// then COPIES 16-byte cp.async per thread of the k-tile two ahead from src (L2-resident) into a 4-slot ring after
// the B tile that nothing reads (BULK: the same bytes as 4 bulk copies issued by thread 0, completing on the
// slot's mbarrier); SYNC: the barrier alone; NOBAR: the copies without the barrier.
// LDG: 16-byte loads per thread and step from src into a register ring 4 steps deep (each step XORs the words
// loaded 4 steps earlier into t, then loads those of 4 steps later into their slot).
template <int ALU_, int FMA_, int WIDE_, int IMAD_, int SHF_, int PRMT_, int LDS_, int LDS_WAYS_, int COPIES_,
          bool SYNC_, bool BULK_, bool NOBAR_, int LDG_>
struct Load {
  static constexpr int ALU = ALU_, FMA = FMA_, WIDE = WIDE_, IMAD = IMAD_, SHF = SHF_, PRMT = PRMT_, LDS = LDS_,
                       LDS_WAYS = LDS_WAYS_, COPIES = COPIES_, LDG = LDG_;
  static constexpr bool SYNC = (SYNC_ || COPIES_ > 0) && !NOBAR_, BULK = BULK_;
  static constexpr int ring_bytes(int threads) { return 4 * COPIES * threads * 16; }
};
// SPLIT (WG = 2): warpgroup 0 only issues MMAs, twice per step (both warpgroups' share, into the same
// accumulators), warpgroup 1 only runs the load.
template <int N, int FRAGS, int WG, bool TOUCH, int DEPTH, class L, bool FEED, bool SS, bool MMA, bool SPLIT>
__global__ void __launch_bounds__(128 * WG) wgmma_ceiling_kernel(float* out, unsigned long long* cycles, int steps,
                                                                 uint32_t k, uint32_t one, const uint8_t* src,
                                                                 int src_bytes) {
  static_assert(!SPLIT || (WG == 2 && MMA && !FEED && !TOUCH), "split: one MMA and one load warpgroup");
  static_assert(L::WIDE + L::IMAD + L::SHF + L::PRMT == 0 || !FEED, "v arbitrary: it cannot be the A operand");
  static_assert((L::LDS_WAYS * 32 + 31) * 4 <= N * 128, "the loads stay inside the B tile");
  const bool issues_mma = MMA && (!SPLIT || threadIdx.x < 128), runs_load = !SPLIT || threadIdx.x >= 128;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = swizzle_atom_aligned(smem_raw);
  auto* b = reinterpret_cast<__nv_bfloat16*>(smem);
  for (int i = threadIdx.x; i < (N + (SS ? 64 : 0)) * 64; i += blockDim.x)  // small varied values, no zeros
    b[i] = __float2bfloat16(0.0625f + 0.001f * static_cast<float>((i * 37 + blockIdx.x) % 61));
  fence_proxy_async_shared();
  __syncthreads();
  uint32_t a_src[FRAGS][4], a_running[FRAGS][4] = {}, v[16], w[16] = {}, t[16] = {};
#pragma unroll
  for (int j = 0; j < FRAGS; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) a_src[j][r] = 0x3D003D00u + ((threadIdx.x * 13 + j * 5 + r) % 97) * 0x00010001u;
#pragma unroll
  for (int r = 0; r < 16; ++r) v[r] = 0x3D003D00u + ((threadIdx.x * 7 + r) % 89) * 0x00010001u;
  float acc[FRAGS][N / 2];
#pragma unroll
  for (int j = 0; j < FRAGS; ++j)
#pragma unroll
    for (int i = 0; i < N / 2; ++i) acc[j][i] = 0.0f;
  const uint64_t desc0 = sw128_kmajor_desc(smem_addr(smem));
  const uint64_t a_desc0 = sw128_kmajor_desc(smem_addr(smem + N * 128));
  const uint32_t lds_addr = smem_addr(smem) + 4 * L::LDS_WAYS * (threadIdx.x % 32);
  uint8_t* ring = smem + (N + (SS ? 64 : 0)) * 128;
  const int tile_bytes = L::COPIES * blockDim.x * 16;
  const int src_tiles = L::COPIES > 0 ? src_bytes / tile_bytes : 1;  // whole k-tiles of copies in src
  __shared__ __align__(8) uint64_t landed[4];  // BULK: the ring slots' mbarriers
  if (L::BULK && threadIdx.x == 0) {
    for (int i = 0; i < 4; ++i) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&landed[i])));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  auto copy_tile = [&](int tile) {  // k-tile `tile`'s copies into ring slot tile % 4, one commit group
    const uint8_t* from = src + static_cast<size_t>((blockIdx.x * 7 + tile) % src_tiles) * tile_bytes;
    uint8_t* to = ring + (tile % 4) * tile_bytes;
    if constexpr (L::BULK) {
      if (threadIdx.x == 0) {
        const uint32_t bar = smem_addr(&landed[tile % 4]);
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(tile_bytes) : "memory");
        for (int c = 0; c < 4; ++c)
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                       ::"r"(smem_addr(to + c * tile_bytes / 4)), "l"(from + c * tile_bytes / 4), "r"(tile_bytes / 4),
                       "r"(bar) : "memory");
      }
    } else {
#pragma unroll
      for (int i = 0; i < L::COPIES; ++i) {
        const int offset = (i * blockDim.x + threadIdx.x) * 16;
        cp_async16(to + offset, from + offset, true);
      }
      cp_async_commit();
    }
  };
  auto wait_tile = [&](int tile) {  // BULK: the slot's (tile / 4)-th phase completed; else all but the last group
    if constexpr (L::BULK) {
      uint32_t done = 0;
      while (!done)
        asm volatile("{.reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p;}"
                     : "=r"(done) : "r"(smem_addr(&landed[tile % 4])), "r"((tile / 4) & 1) : "memory");
    } else {
      cp_async_wait<1>();
    }
  };
  if constexpr (L::COPIES > 0) copy_tile(0), copy_tile(1);
  constexpr int LDG_SLOTS = L::LDG > 0 ? L::LDG : 1;
  const int ldg_step_bytes = LDG_SLOTS * blockDim.x * 16;
  const uint8_t* ldg_end = src + src_bytes / ldg_step_bytes * ldg_step_bytes;
  const uint8_t* ldg_next = src + (blockIdx.x * 7 % (src_bytes / ldg_step_bytes)) * ldg_step_bytes;
  uint4 held[4][LDG_SLOTS];  // the LDG ring
  auto ldg_step = [&](uint4 (&to)[LDG_SLOTS]) {  // the next step's loads, the pointer wrapping inside src
#pragma unroll
    for (int i = 0; i < L::LDG; ++i)
      asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(to[i].x), "=r"(to[i].y), "=r"(to[i].z), "=r"(to[i].w)
                   : "l"(ldg_next + (i * blockDim.x + threadIdx.x) * 16));
    ldg_next += ldg_step_bytes;
    if (ldg_next == ldg_end) ldg_next = src;
  };
  if constexpr (L::LDG > 0)
    for (int slot = 0; slot < 4; ++slot) ldg_step(held[slot]);
  __syncthreads();
  const long long t0 = clock64();
  // One k16 step; slot (a compile-time constant): the LDG ring's slot of this step.
  auto step = [&](int s, auto slot) {
    if constexpr (L::LDG > 0) {
      constexpr int j = decltype(slot)::value;
#pragma unroll
      for (int i = 0; i < L::LDG; ++i) t[i % 16] ^= held[j][i].x ^ held[j][i].y ^ held[j][i].z ^ held[j][i].w;
      ldg_step(held[j]);
    }
    if ((L::SYNC || L::COPIES > 0) && s % 4 == 0) {
      if constexpr (L::COPIES > 0) {
        wait_tile(s / 4);
        fence_proxy_async_shared();
      }
      if constexpr (L::SYNC) __syncthreads();
      if constexpr (L::COPIES > 0) copy_tile(s / 4 + 2);
    }
    if (runs_load) {
#pragma unroll
      for (int i = 0; i < L::ALU; ++i) asm volatile("lop3.b32 %0, %0, %1, %1, 0x96;" : "+r"(v[i % 16]) : "r"(k));
#pragma unroll
      for (int i = 0; i < L::FMA; ++i) asm volatile("mul.rn.bf16x2 %0, %0, %1;" : "+r"(v[i % 16]) : "r"(one));
#pragma unroll
      for (int i = 0; i < L::WIDE; ++i)  // by k, a kernel argument, so ptxas keeps the multiply (v feeds no MMA here)
        asm volatile("{.reg .u64 t; mul.wide.u32 t, %0, %2; mov.b64 {%0, %1}, t;}" : "+r"(v[i % 16]), "+r"(w[i % 16])
                     : "r"(k));
#pragma unroll
      for (int i = 0; i < L::IMAD; ++i) asm volatile("mad.lo.u32 %0, %0, %1, %1;" : "+r"(v[i % 16]) : "r"(k));
#pragma unroll
      for (int i = 0; i < L::SHF; ++i) asm volatile("shf.r.wrap.b32 %0, %0, %0, %1;" : "+r"(v[i % 16]) : "r"(k));
#pragma unroll
      for (int i = 0; i < L::PRMT; ++i) asm volatile("prmt.b32 %0, %0, %1, 0x4051;" : "+r"(v[i % 16]) : "r"(k));
#pragma unroll
      for (int i = 0; i < L::LDS; ++i)  // a different word of the same bank set each time: i added to the address
        asm volatile("ld.shared.u32 %0, [%1];" : "=r"(t[i % 16]) : "r"(lds_addr + 4 * static_cast<uint32_t>(i)));
    }
    if (issues_mma) {
      // The kernel's register discipline: this step's A fragments in fresh registers, the previous step's kept
      // alive (a_running) until the wait says its MMAs are done.
      uint32_t a[FRAGS][4];
#pragma unroll
      for (int j = 0; j < FRAGS; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r)  // touch: one dependent ALU op per register, as a dequantized fragment
          a[j][r] = FEED ? v[(4 * j + r) % 16]
                         : TOUCH ? a_src[j][r] ^ (static_cast<uint32_t>(s & 1) * 0x00010001u) : a_src[j][r];
      wgmma_fence();
#pragma unroll
      for (int rep = 0; rep < (SPLIT ? 2 : 1); ++rep) {
        const uint32_t slice = 2 * ((s + rep) & 3);  // the k16 column slice of the 128-byte rows
#pragma unroll
        for (int j = 0; j < FRAGS; ++j) {
          if constexpr (SS) wgmma_ss<__nv_bfloat16, N>(acc[j], a_desc0 + slice, desc0 + slice);
          else wgmma_rs<__nv_bfloat16, N>(acc[j], a[j], desc0 + slice);
        }
      }
      wgmma_commit();
      wgmma_wait<DEPTH>();
#pragma unroll
      for (int j = 0; j < FRAGS; ++j) {
        fence_fragment(a_running[j]);
#pragma unroll
        for (int r = 0; r < 4; ++r) a_running[j][r] = a[j][r];
      }
    }
  };
  using Slot0 = std::integral_constant<int, 0>;
  if constexpr (L::LDG > 0) {  // 4 steps per iteration: each with its ring slot in registers
    for (int s = 0; s < steps; s += 4)
      step(s, Slot0()), step(s + 1, std::integral_constant<int, 1>()), step(s + 2, std::integral_constant<int, 2>()),
          step(s + 3, std::integral_constant<int, 3>());
  } else {
    for (int s = 0; s < steps; ++s) step(s, Slot0());
  }
  wgmma_wait<0>();
  cp_async_wait<0>();
  if constexpr (L::LDG > 0)  // the ring's last loads: t keeps them live
#pragma unroll
    for (int j = 0; j < 4; ++j) t[j] ^= held[j][0].x;
  if constexpr (L::BULK) {  // the two k-tiles copied ahead: no bulk copy may still write when the CTA exits
    const int tiles = (steps + 3) / 4;
    wait_tile(tiles), wait_tile(tiles + 1);
  }
  const long long t1 = clock64();
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < FRAGS; ++j) {
    fence_fragment(a_running[j]);
    fence_accumulators(acc[j]);
#pragma unroll
    for (int i = 0; i < N / 2; ++i) sum += acc[j][i];
  }
#pragma unroll
  for (int r = 0; r < 16; ++r) sum += static_cast<float>((v[r] ^ w[r] ^ t[r]) & 1);  // keeps the load live
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;  // keeps the MMAs live
  if (threadIdx.x % 128 == 0) atomicMax(&cycles[blockIdx.x], static_cast<unsigned long long>(t1 - t0));
}

template <int N, int FRAGS, int WG, bool TOUCH, int DEPTH, class L, bool FEED, bool SS, bool MMA, bool SPLIT>
void launch(at::Tensor out, at::Tensor cycles, int64_t blocks, int64_t steps) {
  auto kernel = wgmma_ceiling_kernel<N, FRAGS, WG, TOUCH, DEPTH, L, FEED, SS, MMA, SPLIT>;
  const int smem = (N + (SS ? 64 : 0)) * 128 + L::ring_bytes(128 * WG) + 1024;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  auto* cycles_out = reinterpret_cast<unsigned long long*>(cycles.data_ptr<int64_t>());  // atomicMax's type
  // The copies' source: 8 MB, held by L2 (50 MB) as the kernel's activations are; what it holds is never read.
  // Never freed: no tensor destructor runs at exit, after the CUDA context is gone.
  static const at::Tensor* src = new at::Tensor(at::empty({8 << 20}, out.options().dtype(at::kByte)));
  kernel<<<blocks, 128 * WG, smem, c10::cuda::getCurrentCUDAStream()>>>(
      out.data_ptr<float>(), cycles_out, steps, 0x5A5A1234u, 0x3F803F80u, src->data_ptr<uint8_t>(),
      static_cast<int>(src->numel()));
}

}  // namespace nvfp4

// case index -> instantiation (the cases of CASES, generated below).
void run_case(int64_t index, at::Tensor out, at::Tensor cycles, int64_t blocks, int64_t steps) {
  using namespace nvfp4;
  switch (index) {
@CASES@
    default: TORCH_CHECK(false, "wgmma_ceiling: no such case");
  }
}
"""


NVCC_FLAGS = ["-O3", "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr", "-Xptxas=-warn-spills"]


def cuda_source(indices: list[int]) -> str:
    """SOURCE with a kernel instantiated for each case of CASES at indices (each compiled case costs time)."""
    def flag(value: bool) -> str:
        return str(value).lower()

    def launch(c: Case) -> str:
        load = (f"Load<{c.alu}, {c.fma}, {c.wide}, {c.imad}, {c.shf}, {c.prmt}, {c.lds}, {c.lds_ways}, {c.copies}, "
                f"{flag(c.sync)}, {flag(c.bulk)}, {flag(c.nobar)}, {c.ldg}>")
        return (f"launch<{c.n}, {c.frags}, {c.wg}, {flag(c.touch)}, {c.depth}, {load}, {flag(c.feed)}, {flag(c.ss)}, "
                f"{flag(c.mma)}, {flag(c.split)}>")

    cases = "\n".join(f"    case {i}: {launch(CASES[i])}(out, cycles, blocks, steps); break;" for i in indices)
    return SOURCE.replace("@CASES@", cases)


def case_indices(pattern: str) -> list[int]:
    """Indices of the cases whose name matches pattern, and of the n256 reference (index 0) the shares are of."""
    return [i for i, c in enumerate(CASES) if i == 0 or re.search(pattern, c.name)]


def build(indices: list[int]):
    from torch.utils.cpp_extension import load_inline

    declaration = "void run_case(int64_t index, at::Tensor out, at::Tensor cycles, int64_t blocks, int64_t steps);"
    return load_inline("wgmma_ceiling", cpp_sources=declaration, cuda_sources=cuda_source(indices),
                       functions=["run_case"], extra_include_paths=[os.path.join(ROOT, "csrc")],
                       extra_cuda_cflags=NVCC_FLAGS)


def measure(module, index: int, blocks: int, warpgroups: int, steps: int, reps: int) -> tuple[float, float]:
    """(median ms of one launch of `blocks` CTAs, mean clock64 cycles per step of a CTA's slowest warpgroup)."""
    out = torch.empty(blocks * 128 * warpgroups, device="cuda")
    cycles = torch.zeros(blocks, dtype=torch.int64, device="cuda")
    module.run_case(index, out, cycles, blocks, steps)  # warm-up (and clocks up)
    times = []
    for _ in range(reps):
        cycles.zero_()  # the warpgroups' atomicMax
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        module.run_case(index, out, cycles, blocks, steps)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    assert torch.isfinite(out).all(), "non-finite accumulators: the MMAs did not run as intended"
    return statistics.median(times), cycles.double().mean().item() / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="k16 steps per warpgroup (default 20000)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--cases", default="", help="regular expression: only the cases whose name it matches "
                        "(and the n256 reference, which the shares are of)")
    args = parser.parse_args()
    if args.steps % 4:
        parser.error("--steps: a multiple of 4 (whole k-tiles; the LDG cases run 4 steps per iteration)")
    indices = case_indices(args.cases)
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}")
    module = build(indices)
    rows, reference = [], None
    for index in indices:
        c = CASES[index]
        name, n, frags, wg, ctas = c.name, c.n, c.frags, c.wg, c.ctas
        blocks = (c.sms or props.multi_processor_count) * ctas
        ms, cycles_per_step = measure(module, index, blocks, wg, args.steps, args.reps)
        mma_groups = wg * frags  # fragments per step and CTA; split: one warpgroup issues both warpgroups' share
        flop = blocks * mma_groups * args.steps * 64 * n * 16 * 2 if c.mma else 0
        tflops = flop / (ms * 1e-3) / 1e12
        per_all_sms = tflops * props.multi_processor_count / (c.sms or props.multi_processor_count)  # shares per SM
        reference = reference or per_all_sms
        # Tensor cycles of one step per sub-partition at full rate: each of a warpgroup's 4 warps runs an
        # m16nNk16 slice on its own sub-partition at 512 dense bf16 FMA per clock (989 TFLOP/s at 1.83 GHz, 132 SMs).
        full_rate = ctas * mma_groups * 16 * n * 16 / 512 if c.mma else 0.0
        rows.append((name, ms, tflops, per_all_sms / reference, cycles_per_step, full_rate))
    print(f"{'case':34} {'ms':>8} {'TFLOP/s':>9} {'of n256':>8} {'cycles/step':>12} {'full-rate cycles':>17}")
    for name, ms, tflops, share, cycles_per_step, full_rate in rows:
        print(f"{name:34} {ms:8.3f} {tflops:9.1f} {share:8.2f} {cycles_per_step:12.1f} {full_rate:17.1f}")


if __name__ == "__main__":
    main()
