// Where split-K keeps a tile's partial sums, and the stream-K schedule of the wgmma kernel. Host and device
// code (no CUDA runtime calls): tests/test_stream_k_schedule.py runs this arithmetic on the CPU.
#pragma once

#include <cstdint>

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

}  // namespace nvfp4
