"""The stream-K schedule of the wgmma kernel (csrc/marlin/split_k.cuh StreamK), run on the CPU: the header is
host and device code, so nvcc compiles it into a small host program that walks every CTA's share the way
marlin_wgmma_kernel does and checks what the kernel relies on. Skipped without nvcc.

- every (tile, k-tile) unit is computed by exactly one CTA, the CTA `cover` names;
- a tile's segments are contiguous in k, numbered 0 .. splits - 1 in k order (the order the fix-up adds them);
- every partial tile (splits > 1) has its own workspace slot, one of its CTA's two (2c, 2c + 1), so the
  workspace of 2 x CTAs slots (gemm_launch.cuh launch_stream_k) holds them all;
- the fix-up, walking slots(s) for s = 0 .. splits - 1, finds the slot each segment's CTA wrote.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HARNESS = r"""
#include <cstdio>
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

int main() {
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
"""


@pytest.mark.slow
def test_stream_k_schedule_covers_every_unit_once_and_keeps_partials_apart(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc")
    (tmp_path / "schedule.cu").write_text(HARNESS)
    exe = tmp_path / "schedule"
    subprocess.run([nvcc, "-std=c++17", "-O2", f"-I{os.path.join(ROOT, 'csrc')}", "-o", str(exe),
                    str(tmp_path / "schedule.cu")], check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert run.stdout.strip().endswith("cases 3008 errors 0"), run.stdout
