"""Every nvfp4::marlin_gemm tactic, gemm="auto", BF16 cuBLAS and the memory floor on the dense shapes.

    python benchmarks/bench_tactics.py [--quick] [--shapes NxK,...] [--ms M,...] [--csv PATH] [--cache-dir DIR]

For (N, K) in the Llama-style shapes and M in {1, 16, 64, 256, 1024, 4096}, microseconds per GEMM of:
  marlin.<cfg>  the W4A16 kernel with one tile config forced     dequant  exact dequantize + cuBLAS
  marlin        the kernel choosing its config by M (gemm="marlin")
  auto          the op with gemm="auto" (profiled in the warm-up, then captured like reduce-overhead does)
  cublas        x @ w.T with the weight already in BF16 (what an unquantized model runs)
  floor         (FP4 weight + scale codes + x + out bytes) / measured device-to-device copy bandwidth
Timing (bench_gemm.time_calls): calls captured in a CUDA graph over weight sets rotated past 2x L2, replayed,
median per call; repetitions sized per problem so big GEMMs do not take minutes. Checks that auto is within 5%
of the fastest single tactic at every point (exit status 1 if not). Prints device and versions first.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemm import (DEV, M_VALUES, SHAPES, copy_bandwidth, device_line,  # noqa: E402
                        random_nvfp4_weight, sets_for, time_calls)

import nvfp4_compile  # noqa: E402,F401  registers torch.ops.nvfp4.*
from nvfp4_compile.ops import gemm_tactics  # noqa: E402
from nvfp4_compile.ops.tactics import TacticCache, TacticSelector  # noqa: E402

AUTO_TOLERANCE = 1.05


def timed(calls) -> float:
    """Median ms per call, with graph length and repetitions sized from a one-pass graph estimate. The estimate
    is GPU time only: sized from an eager call, a tactic behind more host work (the op's dispatch) got shorter
    graphs, so more of the replay's launch cost per call (~1 us at 20 us: auto looked 5-10% slower than its
    own choice)."""
    est = max(time_calls(calls, reps=3, min_calls=1), 1e-3)
    min_calls = max(1, min(32, math.ceil(0.5 / est)))  # replays of >= 0.5 ms amortize the launch
    per_replay = est * max(min_calls, len(calls))
    reps = max(3, min(30, int(60 / per_replay)))
    return time_calls(calls, reps=reps, min_calls=min_calls)


def bench_shape(n, k, m_values, l2_bytes, bandwidth, gen, ts):
    fp4_bytes = n * k // 2 + n * k // 16
    n_sets = sets_for(fp4_bytes, l2_bytes)
    weights = [torch.ops.nvfp4.marlin_repack(*random_nvfp4_weight(n, k, gen)) for _ in range(n_sets)]
    gs = torch.tensor(1e-3, device=DEV)
    bf16_sets = sets_for(2 * n * k, l2_bytes)
    w_bf16 = [gemm_tactics.dequantize_weight(*weights[i % n_sets], gs, n, k, torch.bfloat16) for i in range(bf16_sets)]
    rows = []
    for m in m_values:
        xs = [torch.randn(m, k, device=DEV, generator=gen).to(torch.bfloat16) for _ in range(max(n_sets, bf16_sets))]

        def over_sets(fn):
            return [(lambda x=xs[i], q=weights[i][0], s=weights[i][1]: fn(x, q, s)) for i in range(n_sets)]

        row = {"n": n, "k": k, "m": m}
        key = gemm_tactics.problem_key(xs[0], n, k)
        for tactic in (*ts.tactics, ts.fallback):
            if not tactic.applies(key):  # e.g. the decode kernel at a prefill M: not timed, shown as nan
                row[tactic.name] = math.nan
                continue
            row[tactic.name] = timed(over_sets(lambda x, q, s, t=tactic: t.run(x, q, s, gs, None, n, k)))
        row["auto"] = timed(over_sets(lambda x, q, s: torch.ops.nvfp4.marlin_gemm(x, q, s, gs, None, n, k, "auto")))
        choice = gemm_tactics.selector().choice(key)
        row["auto_choice"] = choice.best if choice else "?"
        row["cublas"] = timed([(lambda x=xs[i], w=w_bf16[i]: F.linear(x, w)) for i in range(bf16_sets)])
        row["floor"] = (fp4_bytes + 2 * m * k + 2 * m * n) / bandwidth * 1e3
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two shapes only")
    parser.add_argument("--shapes", help="N x K pairs instead of the default shapes, e.g. 6144x4096,4096x14336 "
                                         "(the Llama-3-8B decode GEMMs with q/k/v and gate/up merged)")
    parser.add_argument("--ms", help="M values instead of the default ones, e.g. 1,8,32")
    parser.add_argument("--csv", help="write the table as CSV here (default: $OUT/bench_tactics.csv if OUT is set)")
    parser.add_argument("--cache-dir", help="tactic cache directory (default: a fresh temporary one, so auto is "
                                            "profiled here, not read from an older run)")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(device_line(props))
    ts = gemm_tactics.tactic_set()
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="nvfp4_tactics_")
    gemm_tactics.set_selector(TacticSelector(ts, gemm_tactics.library_version(), TacticCache(cache_dir)))
    print(f"tactics: {', '.join(ts.names)} (fallback {ts.fallback.name}); extension build {ts.build}; "
          f"cache {cache_dir}")
    l2_bytes = getattr(props, "L2_cache_size", 50 * 2**20)
    bandwidth = copy_bandwidth()
    print(f"device-to-device copy bandwidth: {bandwidth / 1e12:.2f} TB/s; L2 {l2_bytes / 2**20:.0f} MiB")
    gen = torch.Generator(device=DEV).manual_seed(0)
    names = [*ts.names, ts.fallback.name]
    cols = [*names, "auto", "cublas", "floor"]
    header = f"{'N':>6} {'K':>6} {'M':>5} | " + " ".join(f"{c:>12}" for c in cols) + " | auto choice   auto/best"
    print("microseconds per GEMM")
    print(header)
    print("-" * len(header))
    rows, slow = [], []
    shapes = SHAPES[:2] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in pair.split("x")) for pair in args.shapes.split(",")]
    m_values = [int(m) for m in args.ms.split(",")] if args.ms else M_VALUES
    for n, k in shapes:
        shape_rows = bench_shape(n, k, m_values, l2_bytes, bandwidth, gen, ts)
        torch.cuda.empty_cache()  # this shape's weights are gone
        for row in shape_rows:
            best = min(row[name] for name in names if not math.isnan(row[name]))
            row["auto_vs_best"] = row["auto"] / best
            if row["auto_vs_best"] > AUTO_TOLERANCE:
                slow.append(row)
            print(f"{row['n']:>6} {row['k']:>6} {row['m']:>5} | " + " ".join(f"{row[c] * 1e3:>12.1f}" for c in cols)
                  + f" | {row['auto_choice']:<13} {row['auto_vs_best']:.3f}", flush=True)
            rows.append(row)
    csv = args.csv or (os.path.join(os.environ["OUT"], "bench_tactics.csv") if os.environ.get("OUT") else None)
    if csv:
        with open(csv, "w") as f:
            f.write(",".join(["n", "k", "m", *(f"{c}_us" for c in cols), "auto_choice", "auto_vs_best"]) + "\n")
            for r in rows:
                f.write(",".join([str(r["n"]), str(r["k"]), str(r["m"]), *(f"{r[c] * 1e3:.3f}" for c in cols),
                                  r["auto_choice"], f"{r['auto_vs_best']:.4f}"]) + "\n")
        print(f"wrote {csv}")
    print(f"auto within {AUTO_TOLERANCE - 1:.0%} of the fastest tactic at {len(rows) - len(slow)}/{len(rows)} points")
    for r in slow:
        print(f"  SLOW: N={r['n']} K={r['k']} M={r['m']}: auto ({r['auto_choice']}) {r['auto_vs_best']:.3f}x best")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
