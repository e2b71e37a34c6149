"""Where a wgmma kernel's warps spend their time, by phase, from ncu's per-instruction stall samples:

    ncu ... --section SourceCounters -o rep python3 benchmarks/profile_gemm.py --problems ...
    ncu -i rep.ncu-rep --page source --csv --print-source sass > src.csv
    python3 benchmarks/ncu_phases.py src.csv

(`bash scripts/gpu_session.sh ncu-wgmma` runs all three.) For each profiled kernel of the source page that holds
HGMMA instructions: the share of warp-stall samples before the main loop (prologue), in it, and after it
(split-K and epilogue), the main loop's stall reasons, and its instructions per pass by opcode, counted from
"Instructions Executed" relative to the HGMMA's. The main loop is taken as the instructions from shortly before
the last barrier ahead of the first HGMMA to the first branch at least 100 instructions after the wgmma wait
that follows the last HGMMA (the loop's back edge in the kernels of csrc/marlin/wgmma_kernel.cuh).
"""
from __future__ import annotations

import argparse
import collections
import csv
import io
import re

SAMPLES = "Warp Stall Sampling (All Samples)"


def kernels(text: str):
    """(kernel name, rows as dicts) per kernel of an `ncu --page source --csv` dump."""
    for part in re.split(r'^"Kernel Name",', text, flags=re.M)[1:]:
        name, body = part.split("\n", 1)
        rows = list(csv.reader(io.StringIO(body)))
        header = rows[0]
        yield name.strip().strip('",'), [dict(zip(header, r)) for r in rows[1:] if len(r) == len(header)]


def number(row: dict, key: str) -> float:
    return float(row.get(key) or 0)


def main_loop(rows) -> tuple[int, int] | None:
    source = [r["Source"] for r in rows]
    hgmma = [i for i, s in enumerate(source) if "HGMMA" in s]
    if not hgmma:
        return None
    barrier = max((i for i in range(hgmma[0]) if "BAR.SYNC" in source[i]), default=None)
    wait = next((i for i in range(hgmma[-1], len(source)) if "DEPBAR" in source[i]), None)
    end = next((i for i in range(wait + 100, len(source)) if "BRA" in source[i]), None) if wait is not None else None
    if barrier is None or end is None:
        return None  # not the loop shape described above
    return max(barrier - 15, 0), end


def opcode(row: dict) -> str:
    """SASS opcode without its predicate and modifiers; WARPGROUP keeps its kind (ARRIVE, or DEPBAR: the wgmma wait)."""
    parts = re.sub(r"^@!?U?P\w+\s+", "", row["Source"].strip()).split()[0].split(".")
    return ".".join(parts[:2]) if parts[0] == "WARPGROUP" else parts[0]


def report(name: str, rows) -> None:
    if not any("HGMMA" in r["Source"] for r in rows):
        return
    bounds = main_loop(rows)
    if bounds is None:
        print(f"{name[:140]}\n  no main loop of the expected shape (barrier, HGMMA, wgmma wait, back edge)")
        return
    begin, end = bounds
    samples = [number(r, SAMPLES) for r in rows]
    total = sum(samples) or 1.0
    print(name[:140])
    print(f"  samples {total:.0f}: prologue {sum(samples[:begin]) / total:.2f}  main loop "
          f"{sum(samples[begin:end + 1]) / total:.2f}  end {sum(samples[end + 1:]) / total:.2f}")
    reasons = collections.Counter()
    for row in rows[begin:end + 1]:
        for key, value in row.items():
            if key.startswith("stall_") and "Not Issued" not in key:
                reasons[key[6:]] += float(value or 0)
    loop_total = sum(reasons.values()) or 1.0
    print("  main-loop stalls: " + " ".join(f"{k} {v / loop_total * 100:.0f}%" for k, v in reasons.most_common(9)))
    # Which instructions the warps stall at: on the dequantization (ALU), or on the wgmma wait (the tensor pipe).
    by_opcode = collections.Counter()
    for row in rows[begin:end + 1]:
        by_opcode[opcode(row)] += number(row, SAMPLES)
    loop_samples = sum(by_opcode.values()) or 1.0
    print("  main-loop samples by opcode: " + " ".join(f"{k} {v / loop_samples * 100:.1f}%"
                                                      for k, v in by_opcode.most_common(10))
          + f" (WARPGROUP.DEPBAR {by_opcode['WARPGROUP.DEPBAR'] / loop_samples * 100:.1f}%)")
    per_pass = number(rows[next(i for i in range(begin, end + 1) if "HGMMA" in rows[i]["Source"])],
                      "Instructions Executed")
    ops = collections.Counter()
    for row in rows[begin:end + 1]:
        executed = number(row, "Instructions Executed")
        if per_pass and executed >= 0.8 * per_pass:  # runs once per pass (not the rarely taken branches)
            ops[opcode(row).split(".")[0]] += executed / per_pass
    print(f"  per main-loop pass: {sum(ops.values()):.0f} instructions: "
          + " ".join(f"{k} {v:.1f}" for k, v in ops.most_common(14)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source_csv", help="ncu -i REPORT --page source --csv --print-source sass > this file")
    args = parser.parse_args()
    with open(args.source_csv) as f:
        text = f.read()
    seen = set()
    for name, rows in kernels(text):
        key = (name, len(rows), sum(number(r, SAMPLES) for r in rows))
        if key not in seen:  # ncu lists a kernel's source page once per view; print each launch once
            seen.add(key)
            report(name, rows)


if __name__ == "__main__":
    main()
