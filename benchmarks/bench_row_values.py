"""Does the 16-row decode kernel's time depend on the values of x's rows? (docs/kernels.md "Ninth session")

    python benchmarks/bench_row_values.py [--shapes NxK,...] [--config gemv16]

gemv16 runs the same instructions at M = 8 and M = 16 (rows past M re-read row M - 1) yet takes ~15% longer at
M = 16. This times the forced config at M = 16 with x's rows 8..15 (the second row group) filled four ways,
plus M = 8, in one process: distinct random rows; copies of row 7 (what M = 8 computes); copies of rows 0..7
(the same values, other addresses); zeros. Same timing as bench_gemm (graph replays over weight sets rotated
past 2x L2, medians). Prints device and versions first.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemm import DEV, device_line, random_nvfp4_weight, sets_for, time_calls  # noqa: E402

import nvfp4_compile  # noqa: E402,F401  registers torch.ops.nvfp4.*


def second_group(x: torch.Tensor, fill: str) -> torch.Tensor:
    x = x.clone()
    if fill == "row7":
        x[8:] = x[7]
    elif fill == "rows0-7":
        x[8:] = x[:8]
    elif fill == "zeros":
        x[8:] = 0
    return x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="8192x8192,28672x8192")
    parser.add_argument("--config", default="gemv16")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(device_line(props))
    config = list(torch.ops.nvfp4_C.marlin_gemm_configs()).index(args.config)
    l2 = props.L2_cache_size
    gen = torch.Generator(device=DEV).manual_seed(0)
    gs = torch.tensor([1e-3], device=DEV)
    fills = ["random", "row7", "rows0-7", "zeros"]
    print(f"{args.config}, microseconds per GEMM (median)")
    print(f"{'N':>6} {'K':>6} | {'M=8':>7} | " + " | ".join(f"{'M=16 ' + f:>13}" for f in fills))
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        n_sets = sets_for(n * k // 2 + n * k // 16, l2)
        weights = [torch.ops.nvfp4.marlin_repack(*random_nvfp4_weight(n, k, gen)) for _ in range(n_sets)]
        xs = [torch.randn(16, k, device=DEV, generator=gen).to(torch.bfloat16) for _ in range(n_sets)]

        def timed(inputs):
            calls = [(lambda x=x, q=q, s=s: torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs, None, n, k, config))
                     for x, (q, s) in zip(inputs, weights)]
            return time_calls(calls, reps=30) * 1e3

        row = [timed([x[:8].contiguous() for x in xs])]
        row += [timed([second_group(x, f) for x in xs]) for f in fills]
        print(f"{n:>6} {k:>6} | {row[0]:>7.1f} | " + " | ".join(f"{t:>13.1f}" for t in row[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
