"""The order in which split-K adds a tile's partials (csrc/marlin/split_k.cuh, both split-K paths) run on the
CPU: the header is host and device code, so nvcc compiles it into a small host program. Skipped without nvcc.

Every thread of a CTA is run in turn through sum_splits_in_order: each unit of the range is stored once, by the
thread that loaded it, and equals the serial sum (((s0 + s1) + s2) + ...) bit for bit, for 1 .. 40 splits, the
batch shapes of every register budget (64-register kernels take smaller batches) and ranges that do not start
at 0 (a cluster CTA's slice); none outside the range is touched.
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
#include <random>
#include <vector>
#include "marlin/split_k.cuh"

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

int main() { return sums(); }
"""


@pytest.mark.slow
def test_split_sums_are_the_serial_sums_bit_for_bit(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc")
    (tmp_path / "split_k.cu").write_text(HARNESS)
    exe = tmp_path / "split_k"  # host code only: no GPU needed to run it
    subprocess.run([nvcc, "-std=c++17", "-O2", f"-I{os.path.join(ROOT, 'csrc')}", "-o", str(exe),
                    str(tmp_path / "split_k.cu")], check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert run.stdout.strip().endswith("cases 960 errors 0"), run.stdout
