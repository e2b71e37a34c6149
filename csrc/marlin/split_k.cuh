// Split-K's bookkeeping: where a tile's partial sums live, the stream-K schedule of the wgmma kernel, and the
// order the partials are added in. Host and device code (no CUDA runtime calls): tests/test_split_k_cpu.py
// runs it on the CPU.
#pragma once

#include <cstdint>

#include <vector_functions.h>  // float4, make_float4 (host and device)

#if defined(__CUDACC__)
#define NVFP4_HD __host__ __device__ __forceinline__
#else
#define NVFP4_HD inline
#endif

namespace nvfp4 {

// Which split of its tile a CTA computed, of how many, and where the workspace path of split-K keeps each
// split's FP32 partial tile: split s in slot base + s * stride (+ first_extra for s = 0) of tile_elems floats.
struct SplitSlots {
  int split, splits;
  int64_t base, stride;
  int first_extra;
  NVFP4_HD int64_t slot(int s) const { return base + s * stride + (s == 0 ? first_extra : 0); }
};

// Stream-K (wgmma configs with STREAM_K): the grid's CTAs share the flattened work of all tiles, tiles x
// k_tiles units (tile-major, tile = m_tile * n_tiles + n_tile), in equal contiguous ranges: CTA c owns
// [begin(c), begin(c + 1)). So every SM gets the same work whatever the tile count (split-K rounds it to whole
// tiles per split: 56 tiles x 2 splits leave 20 of 132 SMs idle), at the cost of partial tiles. The units of
// tile t are covered by the consecutive CTAs cover(t KT) .. cover((t + 1) KT - 1), split j of the tile being
// the (j + 1)-th; they add in that (k) order through the workspace (store_tile). A CTA has at most two partial
// tiles, its first and its last (those between are whole), so it owns workspace slots 2c and 2c + 1.
struct StreamK {
  int64_t total;  // tiles * k_tiles, < 2^31 (launch_stream_k)
  int ctas;       // gridDim.x, 1 .. total
  NVFP4_HD int begin(int c) const { return static_cast<int>(total * c / ctas); }
  NVFP4_HD int cover(int unit) const { return static_cast<int>(((unit + 1) * int64_t{ctas} - 1) / total); }
  // Tile t (units [t0, t0 + k_tiles)) as seen by CTA c: its split index, the split count and their slots.
  NVFP4_HD SplitSlots splits_of(int c, int t0, int k_tiles) const {
    const int c0 = cover(t0), c1 = cover(t0 + k_tiles - 1);
    return {c - c0, c1 - c0 + 1, 2 * static_cast<int64_t>(c0), 2, begin(c0) != t0};
  }
};

// Thread tid's part of adding the splits of the 4-column units [begin, end) of a tile in split order, so the
// sum is bit-identical to a serial one whichever path adds it: load(s, i) gives split s's unit i, store(i, sum)
// keeps the sum. Each thread loads U units of S splits before adding any, so U * S loads (L2 or distributed
// shared memory) are in flight at once; one unit at a time made the workspace fix-up a chain of L2 latencies,
// 16-32 in a row per thread at M = 256 (docs/kernels.md "Split-K").
template <int THREADS, int U, int S, class Load, class Store>
NVFP4_HD void sum_splits_batched(int tid, int begin, int end, int splits, Load load, Store store) {
  for (int i0 = begin + tid; i0 < end; i0 += U * THREADS) {
    float4 sum[U];
    for (int s0 = 0; s0 < splits; s0 += S) {
      float4 v[U][S];
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int t = 0; t < S; ++t) {
          v[u][t] = make_float4(0.f, 0.f, 0.f, 0.f);
          if (i0 + u * THREADS < end && s0 + t < splits) v[u][t] = load(s0 + t, i0 + u * THREADS);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int t = 0; t < S; ++t) {
          if (s0 + t == 0) {
            sum[u] = v[u][t];
          } else if (s0 + t < splits) {
            sum[u].x += v[u][t].x, sum[u].y += v[u][t].y, sum[u].z += v[u][t].z, sum[u].w += v[u][t].w;
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (i0 + u * THREADS < end) store(i0 + u * THREADS, sum[u]);
  }
}

// sum_splits_batched with 8 loads in flight per thread (4 units of 2 splits, 2 of 4, 1 of 8 and more); the
// kernels of 64 registers per thread (512 threads x 2 CTAs per SM) take 2 units of 2 (more spill there).
template <class Cfg, class Load, class Store>
NVFP4_HD void sum_splits_in_order(int tid, int begin, int end, int splits, Load load, Store store) {
  constexpr bool kNarrow = 65536 / (Cfg::THREADS * Cfg::MIN_BLOCKS) <= 64;
  if (splits <= 2)
    sum_splits_batched<Cfg::THREADS, kNarrow ? 2 : 4, 2>(tid, begin, end, splits, load, store);
  else if (splits <= 4 && !kNarrow)
    sum_splits_batched<Cfg::THREADS, 2, 4>(tid, begin, end, splits, load, store);
  else
    sum_splits_batched<Cfg::THREADS, 1, 8>(tid, begin, end, splits, load, store);
}

}  // namespace nvfp4
