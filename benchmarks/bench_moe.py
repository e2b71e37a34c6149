"""How fast is nvfp4::marlin_moe, per tactic, against a BF16 MoE and against the memory floor of the experts it touches?

    python benchmarks/bench_moe.py [--quick] [--models mixtral-8x7b,...] [--csv out.csv]

Layers: Mixtral-8x7B (E=8, top-2, H=4096, I=14336) and Qwen3-30B-A3B (E=128, top-8, H=2048, I=768), SwiGLU,
M in {1, 16, 64, 256, 1024, 4096} tokens, random softmax routing (distinct experts per token). Per call:
  marlin.<tile>  the W4A16 MoE kernels with the grouped GEMM's tile forced (ops/moe_tactics.py)
  dequant        both expert stacks dequantized to BF16 + torch._grouped_mm
  auto           nvfp4::marlin_moe(gemm="auto"): the tactic the selector picks (profiled first, fresh cache)
  bf16           the same MoE with BF16 weights: argsort by expert, gather, torch._grouped_mm (gate/up), silu*up,
                 torch._grouped_mm (down), weighted index_add in FP32 (per-expert matmuls if torch has no _grouped_mm)
  floor          (FP4 weights + scale codes of the experts this routing touches + x in + out) / measured
                 device-to-device copy bandwidth (bytes read + written)
Timing as bench_gemm.py: CUDA graphs over several input sets (different routings, so different experts),
median over replays; the random FP4 codes and scale codes are in the kernel layout (timing does not depend on
which codes). Prints device and torch first.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # bench_gemm; the package from this checkout
from bench_gemm import copy_bandwidth, device_line, time_calls  # noqa: E402  (same timing method as the GEMM benchmark)

import nvfp4_compile  # noqa: E402,F401  registers torch.ops.nvfp4.*
from nvfp4_compile.ops import _C, moe_tactics  # noqa: E402
from nvfp4_compile.ops.tactics import TacticCache, TacticSelector  # noqa: E402

DEV = "cuda"
MODELS = {  # name: (E, top-k, H, I)
    "mixtral-8x7b": (8, 2, 4096, 14336),
    "qwen3-30b-a3b": (128, 8, 2048, 768),
}
M_VALUES = [1, 16, 64, 256, 1024, 4096]
SETS = 4  # input sets (routings) rotated inside each timed graph


def random_marlin_stack(e: int, n: int, k: int, gen: torch.Generator):
    """qweight int32 [E, K/16, 2N], scale codes uint8 [E, K/16, N] (codes 56..119: scales 2^-2..2^5.9),
    decode scales [E]. N and K here are multiples of 64, so no padding."""
    q = torch.randint(-(2**31), 2**31 - 1, (e, k // 16, 2 * n), dtype=torch.int32, device=DEV, generator=gen)
    s = torch.randint(56, 120, (e, k // 16, n), dtype=torch.uint8, device=DEV, generator=gen)
    gs = torch.full((e,), 1e-3, device=DEV)
    return q, s, gs


def random_routing(m: int, e: int, k: int, gen: torch.Generator):
    logits = torch.randn(m, e, device=DEV, generator=gen)
    weights, ids = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
    return ids, weights / weights.sum(-1, keepdim=True)


def bf16_moe(x, ids, weights, w13t, w2t, inter):
    """Reference BF16 MoE with torch._grouped_mm; w13t [E, H, 2I] and w2t [E, I, H] column-major views."""
    e, k = w13t.shape[0], ids.shape[1]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = (flat.unsqueeze(1) == torch.arange(e, device=x.device)).sum(0)  # no host sync (graph safe)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    token = order // k
    h = torch._grouped_mm(x[token], w13t, offs=offs)
    a = F.silu(h[:, :inter]) * h[:, inter:]
    y = torch._grouped_mm(a, w2t, offs=offs)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    out.index_add_(0, token, y.float() * weights.reshape(-1)[order].unsqueeze(1))
    return out.to(x.dtype)


def bf16_moe_loop(x, ids, weights, w13t, w2t, inter):
    """Fallback without torch._grouped_mm: one matmul pair per routed expert (host syncs: not graph safe)."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for expert in ids.unique().tolist():
        tok, slot = (ids == expert).nonzero(as_tuple=True)
        h = x[tok] @ w13t[expert]
        y = (F.silu(h[:, :inter]) * h[:, inter:]) @ w2t[expert]
        out.index_add_(0, tok, y.float() * weights[tok, slot].unsqueeze(1))
    return out.to(x.dtype)


def time_eager(call, reps: int = 10) -> float:
    call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def time_graph_or_eager(calls, reps, min_calls, label):
    """time_calls (CUDA graph); if capture fails, say why and time the first call eagerly instead."""
    try:
        return time_calls(calls, reps=reps, min_calls=min_calls), "graph"
    except Exception as exc:  # noqa: BLE001  report and keep benchmarking
        print(f"  {label}: graph capture failed ({type(exc).__name__}: {str(exc)[:120]}); timing eagerly")
        torch.cuda.synchronize()
        return time_eager(calls[0], reps=reps), "eager"


def grouped_mm_works(w13t, w2t, inter) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x = torch.randn(3, w13t.shape[1], device=DEV).to(torch.bfloat16)
        ids = torch.zeros(3, 1, dtype=torch.long, device=DEV)
        bf16_moe(x, ids, torch.ones(3, 1, device=DEV), w13t, w2t, inter)
        torch.cuda.synchronize()
        return True
    except Exception as exc:  # noqa: BLE001  an unsupported build/device: fall back and say so
        print(f"torch._grouped_mm unusable here ({type(exc).__name__}: {exc}); BF16 = per-expert matmuls")
        return False


def bench_model(name, e, k, h, inter, m_values, bandwidth, gen, tactics):
    q13, s13, gs13 = random_marlin_stack(e, 2 * inter, h, gen)
    q2, s2, gs2 = random_marlin_stack(e, h, inter, gen)
    stacks = (q13, s13, gs13, q2, s2, gs2)
    w13t = torch.randn(e, 2 * inter, h, device=DEV, generator=gen).to(torch.bfloat16).transpose(1, 2)
    w2t = torch.randn(e, h, inter, device=DEV, generator=gen).to(torch.bfloat16).transpose(1, 2)
    w13t.mul_(h**-0.5)
    w2t.mul_(inter**-0.5)
    grouped = grouped_mm_works(w13t, w2t, inter)
    expert_bytes = (q13[0].numel() * 4 + s13[0].numel()) + (q2[0].numel() * 4 + s2[0].numel())
    ts = moe_tactics.tactic_set()
    rows = []
    for m in m_values:
        sets = [(torch.randn(m, h, device=DEV, generator=gen).to(torch.bfloat16), *random_routing(m, e, k, gen))
                for _ in range(SETS)]
        touched = sum(int(ids.unique().numel()) for _, ids, _ in sets) / SETS
        min_calls = 32 if m <= 64 else 8 if m <= 1024 else 4
        reps = 30 if m <= 1024 else 10
        times = {}
        for tactic in tactics:
            run = ts.get(tactic).run
            calls = [(lambda x=x, ids=ids, w=w, run=run: run(x, ids, w, *stacks, "silu", inter)) for x, ids, w in sets]
            times[tactic], _ = time_graph_or_eager(calls, reps, min_calls, tactic)
        ops_moe = torch.ops.nvfp4.marlin_moe
        ops_moe(*sets[0], *stacks, "silu", inter, "auto")  # profiles this M bucket outside the capture
        choice = moe_tactics.selector().choice(moe_tactics.problem_key(sets[0][0], sets[0][1], q13, "silu", inter))
        calls = [(lambda x=x, ids=ids, w=w: ops_moe(x, ids, w, *stacks, "silu", inter, "auto")) for x, ids, w in sets]
        times["auto"], _ = time_graph_or_eager(calls, reps, min_calls, "auto")
        if grouped:
            bf16_calls = [(lambda x=x, ids=ids, w=w: bf16_moe(x, ids, w, w13t, w2t, inter)) for x, ids, w in sets]
            bf16, _ = time_graph_or_eager(bf16_calls, reps, min_calls, "bf16")
        else:
            bf16 = time_eager(lambda: bf16_moe_loop(*sets[0], w13t, w2t, inter))
        floor = (touched * expert_bytes + 4 * m * h) / bandwidth * 1e3
        best = min(times[t] for t in tactics)
        picked = choice.best if choice else "?"
        rows.append((name, m, touched, times, bf16, floor, picked, "grouped_mm" if grouped else "loop"))
        cells = " ".join(f"{times[t] * 1e3:>12.1f}" for t in (*tactics, "auto"))
        auto = times["auto"]
        print(f"{name:>14} {m:>5} {touched:>7.1f} | {cells} {bf16 * 1e3:>9.1f} {floor * 1e3:>9.1f} | "
              f"{floor / auto * 100:>6.1f}% {bf16 / auto:>9.2f}x {auto / best:>8.3f} {picked}", flush=True)
        del sets, calls
    del q13, s13, q2, s2, stacks, w13t, w2t
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="M in {1, 64, 4096} only")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--csv", help="also write the table as CSV here")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(f"{device_line(props)}, MoE kernel: {_C.has_kernel('marlin_moe')}")
    if not moe_tactics.available():
        raise SystemExit(f"the MoE tactics need the CUDA extension ({_C.LOAD_ERROR or 'not built'})")
    bandwidth = copy_bandwidth()
    print(f"device-to-device copy bandwidth: {bandwidth / 1e12:.2f} TB/s (read + write)")
    gen = torch.Generator(device=DEV).manual_seed(0)
    m_values = [1, 64, 4096] if args.quick else M_VALUES
    tactics = moe_tactics.tactic_set().names
    cache_dir = tempfile.mkdtemp(prefix="nvfp4_moe_tactics_")
    moe_tactics.set_selector(TacticSelector(moe_tactics.tactic_set(), moe_tactics.library_version(),
                                            TacticCache(cache_dir)))
    print(f"tactics: {', '.join(tactics)}; auto profiles into a fresh cache ({cache_dir}); times in us per call")
    cols = " ".join(f"{t:>12}" for t in (*tactics, "auto"))
    header = (f"{'model':>14} {'M':>5} {'experts':>7} | {cols} {'bf16':>9} {'floor':>9} | "
              f"{'floor/auto':>7} {'bf16/auto':>10} {'auto/best':>8} auto choice")
    print(header)
    print("-" * len(header))
    all_rows = []
    for name in args.models.split(","):
        e, k, h, inter = MODELS[name]
        all_rows += bench_model(name, e, k, h, inter, m_values, bandwidth, gen, tactics)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("model,m,touched_experts," + ",".join(f"{t}_us" for t in (*tactics, "auto"))
                    + ",bf16_us,floor_us,auto_choice,bf16_impl\n")
            for name, m, touched, times, bf16, floor, picked, impl in all_rows:
                cells = ",".join(f"{times[t] * 1e3:.3f}" for t in (*tactics, "auto"))
                f.write(f"{name},{m},{touched:.2f},{cells},{bf16 * 1e3:.3f},{floor * 1e3:.3f},{picked},{impl}\n")


if __name__ == "__main__":
    main()
