"""One launch per (N, K, M, tactic) of the dense GEMM and of BF16 cuBLAS, to be run under Nsight Compute:

    ncu --clock-control none -k regex:'marlin|gemv|gemm|nvjet' --section SpeedOfLight \\
        --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \\
        python benchmarks/profile_gemm.py [--problems 28672x4096x1:m16,...]

Each problem runs once to warm up (lazy init, workspace), then once more; profile the second launch of each
(ncu --launch-skip/--launch-count or read both). Random FP4 weights and realistic block scales, BF16 x.
"""
from __future__ import annotations

import argparse

import torch

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*

from bench_gemm import DEV, random_nvfp4_weight

DEFAULT = "28672x4096x1:m16,28672x4096x1:gemv8,4096x4096x1:gemv8,4096x14336x1:gemv8,28672x4096x1:cublas"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default=DEFAULT, help="NxKxM:tactic, tactic a config name or cublas")
    args = parser.parse_args()
    configs = list(torch.ops.nvfp4_C.marlin_gemm_configs())
    gen = torch.Generator(device=DEV).manual_seed(0)
    gs = torch.tensor(1e-3, device=DEV)
    for problem in args.problems.split(","):
        shape, tactic = problem.split(":")
        n, k, m = (int(v) for v in shape.split("x"))
        x = torch.randn(m, k, device=DEV, generator=gen).to(torch.bfloat16)
        if tactic == "cublas":
            w = torch.randn(n, k, device=DEV, generator=gen).to(torch.bfloat16)
            run = lambda: x @ w.t()  # noqa: E731
        else:
            q, s = torch.ops.nvfp4.marlin_repack(*random_nvfp4_weight(n, k, gen))
            # "<config>.fit": the config with K split only as finely as its clusters all fit (kConfigFitClusters)
            name, _, fit = tactic.partition(".")
            config = configs.index(name) | (torch.ops.nvfp4_C.marlin_gemm_fit_clusters_flag() if fit == "fit" else 0)
            run = lambda: torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs, None, n, k, config)  # noqa: E731
        for _ in range(2):
            run()
        torch.cuda.synchronize()
        print(f"ran {problem}", flush=True)


if __name__ == "__main__":
    main()
