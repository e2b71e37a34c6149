"""One gemv16 launch at M = 8, one at M = 16 (rows 8..15 random), one at M = 16 with rows 8..15 copies of row 7,
one gemv16b launch at M = 16 and one gemv8b launch at M = 8 (x loaded in coalesced blocks), on the same
8192 x 8192 weight, for ncu to compare (docs/kernels.md "Ninth session": the M = 16 cost comes with reading 8
more distinct rows of x; the L1 wavefronts of the x loads are the candidate, which gemv16b cuts from 32 to ~12
per k16 step):

    ncu --clock-control none -k regex:marlin_gemv_kernel --launch-skip 5 --launch-count 5 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        python3 benchmarks/profile_gemv_rows.py

Each variant is launched once as warm-up first (the skipped launches), then once more in the same order.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemm import DEV, random_nvfp4_weight  # noqa: E402

import nvfp4_compile  # noqa: E402,F401  registers torch.ops.nvfp4.*

N = K = 8192


def main() -> int:
    gen = torch.Generator(device=DEV).manual_seed(0)
    q, s = torch.ops.nvfp4.marlin_repack(*random_nvfp4_weight(N, K, gen))
    gs = torch.tensor([1e-3], device=DEV)
    names = list(torch.ops.nvfp4_C.marlin_gemm_configs())
    gemv16, gemv16b, gemv8b = names.index("gemv16"), names.index("gemv16b"), names.index("gemv8b")
    x16 = torch.randn(16, K, device=DEV, generator=gen).to(torch.bfloat16)
    x16_row7 = x16.clone()
    x16_row7[8:] = x16[7]
    variants = {"gemv16 M=8": (x16[:8].contiguous(), gemv16), "gemv16 M=16": (x16, gemv16),
                "gemv16 M=16 rows 8..15 = row 7": (x16_row7, gemv16), "gemv16b M=16": (x16, gemv16b),
                "gemv8b M=8": (x16[:8].contiguous(), gemv8b)}
    for _ in range(2):  # warm-up round, then the profiled round
        for name, (x, config) in variants.items():
            torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs, None, N, K, config)
            torch.cuda.synchronize()
    print("launch order (each round):", ", ".join(variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
