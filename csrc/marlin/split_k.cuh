// The order in which split-K adds a tile's partial sums (both paths: workspace and cluster). Host and device
// code (no CUDA runtime calls): tests/test_split_k_cpu.py runs it on the CPU.
#pragma once

#include <vector_functions.h>  // float4, make_float4 (host and device)

#if defined(__CUDACC__)
#define NVFP4_HD __host__ __device__ __forceinline__
#else
#define NVFP4_HD inline
#endif

namespace nvfp4 {

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
// kernels of 64 registers per thread (512 threads x 2 CTAs per SM) keep one unit of up to 8 splits (more spill).
template <class Cfg, class Load, class Store>
NVFP4_HD void sum_splits_in_order(int tid, int begin, int end, int splits, Load load, Store store) {
  constexpr bool kNarrow = 65536 / (Cfg::THREADS * Cfg::MIN_BLOCKS) <= 64;
  if (splits <= 2 && !kNarrow)
    sum_splits_batched<Cfg::THREADS, 4, 2>(tid, begin, end, splits, load, store);
  else if (splits <= 4 && !kNarrow)
    sum_splits_batched<Cfg::THREADS, 2, 4>(tid, begin, end, splits, load, store);
  else
    sum_splits_batched<Cfg::THREADS, 1, 8>(tid, begin, end, splits, load, store);
}

}  // namespace nvfp4
