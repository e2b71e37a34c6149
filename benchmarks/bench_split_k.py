"""Split-K paths of the dense W4A16 GEMM, A/B in one run: per (N, K, M, config), microseconds per GEMM with

  workspace  FP32 partials in global memory + arrival counters (clusters off)
  cluster    the splits of a tile in one thread-block cluster where all clusters fit at once (the default;
             else the workspace path)

    python benchmarks/bench_split_k.py [--shapes NxK,...] [--ms M,...] [--configs name,...]

Same timing as bench_tactics.py (CUDA-graph replays over weight sets rotated past 2x L2, medians). A config that
does not apply at an M (gemv8 above M = 8, gemv16 above 16) is skipped. Hopper only (clusters); prints device and versions first.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemm import DEV, device_line, random_nvfp4_weight, sets_for  # noqa: E402
from bench_tactics import timed  # noqa: E402

import nvfp4_compile  # noqa: E402,F401  registers torch.ops.nvfp4.*
from nvfp4_compile.ops.gemm_tactics import CONFIG_MAX_M  # noqa: E402

SHAPES = "4096x4096,6144x4096,14336x4096,4096x14336,8192x8192,8192x28672,28672x8192"
CONFIGS_BY_M = {1: "gemv8,m16", 16: "gemv16,m16", 64: "m64,wg64x256,wg64x512,wg128x256w4",
                256: "wg256x128,wg128x256w4,wg64x256w4,wg128x256,wg128x128"}
MODES = ("workspace", "cluster")


def set_mode(mode: str) -> None:
    torch.ops.nvfp4_C.marlin_cluster_split_k(mode == "cluster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--ms", default="1,16,64,256")
    parser.add_argument("--configs", help="config names for every M (default: the likely ones per M)")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(device_line(props))
    names = list(torch.ops.nvfp4_C.marlin_gemm_configs())
    l2_bytes = getattr(props, "L2_cache_size", 50 * 2**20)
    gen = torch.Generator(device=DEV).manual_seed(0)
    gs = torch.tensor(1e-3, device=DEV)
    print(f"{'N':>6} {'K':>6} {'M':>5} {'config':>12} | " + " ".join(f"{m:>10}" for m in MODES) + " | cluster/workspace")
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        n_sets = sets_for(n * k // 2 + n * k // 16, l2_bytes)
        weights = [torch.ops.nvfp4.marlin_repack(*random_nvfp4_weight(n, k, gen)) for _ in range(n_sets)]
        for m in (int(v) for v in args.ms.split(",")):
            xs = [torch.randn(m, k, device=DEV, generator=gen).to(torch.bfloat16) for _ in range(n_sets)]
            configs = (args.configs or CONFIGS_BY_M.get(m, "m16")).split(",")
            for name in configs:
                if m > CONFIG_MAX_M.get(name, m):
                    continue
                cfg = names.index(name)
                calls = [(lambda x=xs[i], q=weights[i][0], s=weights[i][1]:
                          torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs, None, n, k, cfg)) for i in range(n_sets)]
                us = {}
                for mode in MODES:
                    set_mode(mode)
                    us[mode] = timed(calls) * 1e3
                print(f"{n:>6} {k:>6} {m:>5} {name:>12} | " + " ".join(f"{us[mo]:>10.1f}" for mo in MODES)
                      + f" | {us['cluster'] / us['workspace']:.3f}", flush=True)
        del weights
        torch.cuda.empty_cache()
    set_mode("cluster")


if __name__ == "__main__":
    main()
