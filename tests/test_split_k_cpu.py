"""Split-K's bookkeeping (csrc/marlin/split_k.cuh) run on the CPU: the header is host and device code, so nvcc
compiles it into a small host program. Skipped without nvcc.

The stream-K schedule of the wgmma kernel (StreamK), walked CTA by CTA as marlin_wgmma_kernel does:
- every (tile, k-tile) unit is computed by exactly one CTA, the CTA `cover` names;
- a tile's segments are contiguous in k, numbered 0 .. splits - 1 in k order (the order the fix-up adds them);
- every partial tile (splits > 1) has its own workspace slot, one of its CTA's two (2c, 2c + 1), so the
  workspace of 2 x CTAs slots (gemm_launch.cuh launch_stream_k) holds them all;
- the fix-up, walking slots(s) for s = 0 .. splits - 1, finds the slot each segment's CTA wrote.

The split sums (sum_splits_in_order, both split-K paths), every thread of a CTA run in turn: each unit of the
range is stored once, by the thread that loaded it, and equals the serial sum (((s0 + s1) + s2) + ...) bit for
bit, for 1 .. 40 splits, the batch shapes of every register budget (64-register kernels take smaller batches)
and ranges that do not start at 0 (a cluster CTA's slice); none outside the range is touched.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HARNESS = r"""
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <vector>
#include "marlin/split_k.cuh"

// Returns the number of violated invariants for one (tiles, k_tiles, ctas), printing the first few.
static int check(int tiles, int k_tiles, int ctas) {
  const nvfp4::StreamK sk{static_cast<int64_t>(tiles) * k_tiles, ctas};
  int errors = 0;
  auto fail = [&](const char* what, int c, int t) {
    if (errors++ < 5) std::printf("FAIL %s: tiles=%d k_tiles=%d ctas=%d cta=%d tile=%d\n", what, tiles, k_tiles, ctas, c, t);
  };
  std::vector<int> owner(static_cast<size_t>(tiles) * k_tiles, -1);
  std::map<int64_t, std::pair<int, int>> slot_of;            // slot -> (cta, tile)
  std::vector<std::map<int, std::pair<int, int>>> segs(tiles);  // tile -> split -> (k begin, k end)
  std::vector<std::map<int, int64_t>> written(tiles);           // tile -> split -> slot written by its CTA
  for (int c = 0; c < ctas; ++c) {
    const int end = sk.begin(c + 1);
    if (end <= sk.begin(c)) fail("empty share", c, -1);
    for (int unit = sk.begin(c); unit < end;) {  // the kernel's loop
      const int tile = unit / k_tiles, t0 = tile * k_tiles;
      const int seg_end = end < t0 + k_tiles ? end : t0 + k_tiles;
      const nvfp4::SplitSlots s = sk.splits_of(c, t0, k_tiles);
      for (int u = unit; u < seg_end; ++u) {
        if (owner[u] != -1) fail("unit computed twice", c, tile);
        owner[u] = c;
        if (sk.cover(u) != c) fail("cover names another CTA", c, tile);
      }
      if (s.split < 0 || s.split >= s.splits) fail("split index out of range", c, tile);
      if (segs[tile].count(s.split)) fail("two segments with one split index", c, tile);
      segs[tile][s.split] = {unit - t0, seg_end - t0};
      if (s.splits > 1) {
        const int64_t slot = s.slot(s.split);
        if (slot != 2 * int64_t{c} && slot != 2 * int64_t{c} + 1) fail("slot not one of the CTA's two", c, tile);
        if (slot_of.count(slot)) fail("slot shared by two partial tiles", c, tile);
        slot_of[slot] = {c, tile};
        written[tile][s.split] = slot;
      }
      unit = seg_end;
    }
  }
  for (size_t u = 0; u < owner.size(); ++u)
    if (owner[u] == -1) fail("unit never computed", -1, static_cast<int>(u / k_tiles));
  for (int t = 0; t < tiles; ++t) {
    const int splits = static_cast<int>(segs[t].size());
    int k = 0;
    for (int j = 0; j < splits; ++j) {
      if (!segs[t].count(j) || segs[t][j].first != k) { fail("segments not contiguous in split order", -1, t); break; }
      k = segs[t][j].second;
    }
    if (k != k_tiles) fail("segments do not end at the last k-tile", -1, t);
    if (splits > 1) {  // the fix-up's view (any CTA of the tile computes the same slots)
      const nvfp4::SplitSlots s = sk.splits_of(sk.cover(t * k_tiles), t * k_tiles, k_tiles);
      if (s.splits != splits) fail("split count differs from the segments", -1, t);
      for (int j = 0; j < splits; ++j)
        if (s.slot(j) != written[t][j]) fail("fix-up reads another slot than the segment wrote", -1, t);
    }
  }
  return errors;
}

static int schedule() {
  int errors = 0, cases = 0;
  // The launch's own choice on 132 SMs (ctas = min(132, units / 8)) for model shapes, then random ones.
  const int shapes[][2] = {{56, 128}, {112, 128}, {16, 448}, {7, 37}, {4, 1057}, {512, 4}, {3584, 128}, {1, 1}};
  for (const auto& s : shapes) {
    const int64_t units = int64_t{s[0]} * s[1];
    const int ctas = static_cast<int>(units / 8 < 1 ? 1 : (units / 8 < 132 ? units / 8 : 132));
    errors += check(s[0], s[1], ctas), ++cases;
  }
  std::mt19937 rng(0);
  for (int i = 0; i < 3000; ++i) {
    const int tiles = 1 + static_cast<int>(rng() % 300), k_tiles = 1 + static_cast<int>(rng() % 200);
    const int64_t units = int64_t{tiles} * k_tiles;
    const int ctas = 1 + static_cast<int>(rng() % (units < 400 ? units : 400));
    errors += check(tiles, k_tiles, ctas), ++cases;
  }
  std::printf("cases %d errors %d\n", cases, errors);
  return errors != 0;
}

// The split sums of one CTA: Threads threads and a register budget of MinBlocks CTAs per SM, as a kernel config.
template <int Threads, int MinBlocks>
struct Cfg {
  static constexpr int THREADS = Threads;
  static constexpr int MIN_BLOCKS = MinBlocks;
};

template <class C>
static int check_sums(std::mt19937& rng, int begin, int end, int splits) {
  int errors = 0;
  auto fail = [&](const char* what, int unit) {
    if (errors++ < 5) std::printf("FAIL %s: threads=%d min_blocks=%d splits=%d [%d, %d) unit=%d\n", what, C::THREADS,
                                  C::MIN_BLOCKS, splits, begin, end, unit);
  };
  const int units = end + 3;  // a few past the range: they must stay untouched
  std::uniform_real_distribution<float> dist(-1e3f, 1e3f);
  std::vector<float4> part(static_cast<size_t>(splits) * units);
  for (float4& v : part) v = make_float4(dist(rng), dist(rng), dist(rng), dist(rng));
  std::vector<float4> out(units, make_float4(NAN, NAN, NAN, NAN));
  std::vector<int> stores(units, 0), loaded_by(units, -1);
  for (int tid = 0; tid < C::THREADS; ++tid) {
    nvfp4::sum_splits_in_order<C>(
        tid, begin, end, splits,
        [&](int s, int i) {
          if (i < begin || i >= end || s < 0 || s >= splits) fail("load outside the range", i);
          if (loaded_by[i] != -1 && loaded_by[i] != tid) fail("unit loaded by two threads", i);
          loaded_by[i] = tid;
          return part[static_cast<size_t>(s) * units + i];
        },
        [&](int i, float4 sum) {
          if (i < begin || i >= end) fail("store outside the range", i);
          if (loaded_by[i] != tid) fail("stored by a thread that did not load it", i);
          ++stores[i];
          out[i] = sum;
        });
  }
  for (int i = 0; i < units; ++i) {
    if (i < begin || i >= end) {
      if (stores[i] != 0) fail("unit outside the range stored", i);
      continue;
    }
    if (stores[i] != 1) fail("unit not stored exactly once", i);
    float4 want = part[i];
    for (int s = 1; s < splits; ++s) {
      const float4 v = part[static_cast<size_t>(s) * units + i];
      want.x += v.x, want.y += v.y, want.z += v.z, want.w += v.w;
    }
    if (std::memcmp(&want, &out[i], sizeof(float4)) != 0) fail("sum differs from the serial one", i);
  }
  return errors;
}

static int sums() {
  std::mt19937 rng(1);
  int errors = 0, cases = 0;
  for (int splits = 1; splits <= 40; ++splits)
    for (const auto& range : {std::pair<int, int>{0, 1}, {0, 32}, {0, 2048}, {0, 8192}, {37, 1000}, {512, 2301}}) {
      errors += check_sums<Cfg<256, 2>>(rng, range.first, range.second, splits);   // gemv / m16: 128 registers
      errors += check_sums<Cfg<512, 2>>(rng, range.first, range.second, splits);   // wg64x256w4: 64 registers
      errors += check_sums<Cfg<512, 1>>(rng, range.first, range.second, splits);   // wg128x256w4
      errors += check_sums<Cfg<128, 1>>(rng, range.first, range.second, splits);   // 255 registers
      cases += 4;
    }
  std::printf("cases %d errors %d\n", cases, errors);
  return errors != 0;
}

int main(int argc, char** argv) {
  return argc > 1 && std::strcmp(argv[1], "sums") == 0 ? sums() : schedule();
}
"""


@pytest.fixture(scope="module")
def split_k_program(tmp_path_factory):
    """The harness above, compiled by nvcc against csrc/ (host code only: no GPU needed to run it)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc")
    tmp = tmp_path_factory.mktemp("split_k")
    (tmp / "split_k.cu").write_text(HARNESS)
    exe = tmp / "split_k"
    subprocess.run([nvcc, "-std=c++17", "-O2", f"-I{os.path.join(ROOT, 'csrc')}", "-o", str(exe), str(tmp / "split_k.cu")],
                   check=True, capture_output=True, text=True)
    return str(exe)


@pytest.mark.slow
def test_stream_k_schedule_covers_every_unit_once_and_keeps_partials_apart(split_k_program):
    run = subprocess.run([split_k_program, "schedule"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert run.stdout.strip().endswith("cases 3008 errors 0"), run.stdout


@pytest.mark.slow
def test_split_sums_are_the_serial_sums_bit_for_bit(split_k_program):
    run = subprocess.run([split_k_program, "sums"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert run.stdout.strip().endswith("cases 960 errors 0"), run.stdout
