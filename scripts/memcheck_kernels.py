"""Every dense tile config and the MoE path on shapes whose K splits end exactly on a ring turn, for
compute-sanitizer's memcheck: a read one k16 step past the weights is invisible to the result tests (the value is
discarded and the caching allocator's blocks have slack behind them), so each tensor here is its own cudaMalloc.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
        python3 scripts/memcheck_kernels.py

Exit status 0 when every launch ran (memcheck's own status says whether any access was out of bounds).
"""
import os
import sys

import torch

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*
from nvfp4_compile.ops.gemm_tactics import CONFIG_MAX_M

DEV = "cuda"
# (N, K): K / 16 = 8, 256, 768, 896 k16 steps (multiples of every ring length), N not a multiple of the tile
SHAPES = [(64, 128), (192, 4096), (4096, 4096), (320, 12288), (8192, 14336)]
M_VALUES = [1, 8, 13, 16, 64, 200]


def random_weight(gen, *shape_nk):
    """Repacked random FP4 weights [*lead, N, K] with E4M3 block scales in 1 .. 448."""
    *lead, n, k = shape_nk
    w = torch.randint(0, 256, (*lead, n, k // 2), dtype=torch.uint8, device=DEV, generator=gen)
    sf = (torch.rand(*lead, n, k // 16, device=DEV, generator=gen) * 447 + 1).to(torch.float8_e4m3fn)
    return torch.ops.nvfp4.marlin_repack(w, sf)


def dense(gen) -> int:
    names = list(torch.ops.nvfp4_C.marlin_gemm_configs())
    hopper = torch.cuda.get_device_capability()[0] == 9
    gs = torch.tensor([1e-3], device=DEV)
    fit = torch.ops.nvfp4_C.marlin_gemm_fit_clusters_flag()
    launches = 0
    for n, k in SHAPES:
        q, s = random_weight(gen, n, k)
        for m in M_VALUES:
            x = torch.randn(m, k, device=DEV, generator=gen).to(torch.bfloat16)
            for config, name in enumerate(names):
                if m > CONFIG_MAX_M.get(name, 1 << 30) or (name.startswith(("wg", "sw")) and not hopper):
                    continue
                # the wgmma configs also with K split only as finely as their clusters all fit (other split ranges)
                for flag in (0, fit) if name.startswith("wg") else (0,):
                    torch.ops.nvfp4_C.marlin_gemm(x, q, s, gs, None, n, k, config | flag)
                    launches += 1
            torch.cuda.synchronize()
    return launches


def moe(gen) -> int:
    e, top_k, h, inter = 8, 2, 2048, 768
    stacks = []
    for rows, k in ((2 * inter, h), (h, inter)):
        stacks += [*random_weight(gen, e, rows, k), torch.full((e,), 1e-3, device=DEV)]
    launches = 0
    for m in (1, 7, 64, 300):
        x = torch.randn(m, h, device=DEV, generator=gen).to(torch.bfloat16)
        ids = torch.stack([torch.randperm(e, device=DEV, generator=gen)[:top_k] for _ in range(m)])
        weights = torch.softmax(torch.randn(m, top_k, device=DEV, generator=gen), dim=-1)
        torch.ops.nvfp4.marlin_moe(x, ids, weights, *stacks, "silu", inter)
        torch.cuda.synchronize()
        launches += 1
    return launches


def main() -> int:
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") != "1":
        print("set PYTORCH_NO_CUDA_MEMORY_CACHING=1: else reads past a tensor land in the allocator's slack")
        return 2
    gen = torch.Generator(device=DEV).manual_seed(0)
    print(f"dense launches: {dense(gen)}, MoE calls: {moe(gen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
