"""Side by side: bench_tactics.py CSVs of kernel variants (scripts/ab_variants.sh), one block per shape and M.

Per block: cuBLAS and the floor (first CSV), then each variant's auto time and choice, then the `--top` fastest
tactics (by their best time over the variants) with every variant's time and the last variant's speed-up over
the first (first / last, so > 1 means the last variant is faster).
"""
from __future__ import annotations

import argparse
import csv
import math
import os

FIXED = ("cublas_us", "floor_us", "auto_us")


def read_rows(path: str) -> dict[tuple[int, int, int], dict[str, str]]:
    with open(path, newline="") as f:
        return {(int(r["n"]), int(r["k"]), int(r["m"])): r for r in csv.DictReader(f)}


def us(row: dict[str, str] | None, column: str) -> float:
    try:
        return float(row[column]) if row else math.nan
    except (KeyError, ValueError):
        return math.nan


def tactic_columns(tables: list[dict]) -> list[str]:
    columns: list[str] = []
    for table in tables:
        for row in table.values():
            columns += [c for c in row if c.endswith("_us") and c not in FIXED and c not in columns]
    return columns


def compare(paths: list[str], top: int) -> list[str]:
    names = [os.path.basename(p).removeprefix("ab_").removesuffix(".csv") for p in paths]
    tables = [read_rows(p) for p in paths]
    columns = tactic_columns(tables)
    choices = [r.get("auto_choice", "-").removeprefix("marlin.") for t in tables for r in t.values()]
    width = max(12, *(len(n) + 2 for n in names), *(len(c) + 2 for c in choices))
    head = f"{'':34}" + "".join(f"{n:>{width}}" for n in names) + f"{'first/last':>12}"
    lines = []
    for key in sorted(set().union(*tables)):
        rows = [t.get(key) for t in tables]
        first = next(r for r in rows if r)
        lines += ["", f"N={key[0]} K={key[1]} M={key[2]}  cuBLAS {us(first, 'cublas_us'):.2f} us, "
                  f"floor {us(first, 'floor_us'):.2f} us", head]

        def line(label: str, times: list[float]) -> str:
            ratio = times[0] / times[-1] if times[-1] > 0 else math.nan
            return f"{label:34}" + "".join(f"{t:>{width}.2f}" for t in times) + f"{ratio:>12.3f}"

        lines.append(line("auto", [us(r, "auto_us") for r in rows]))
        picks = [(r or {}).get("auto_choice", "-").removeprefix("marlin.") for r in rows]
        lines.append(f"{'  auto choice':34}" + "".join(f"{p:>{width}}" for p in picks))
        ranked = sorted(columns, key=lambda c: min((us(r, c) for r in rows if not math.isnan(us(r, c))),
                                                   default=math.inf))
        lines += [line(c.removesuffix("_us").removeprefix("marlin."), [us(r, c) for r in rows]) for c in ranked[:top]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csvs", nargs="+", help="bench_tactics.py CSVs, the baseline first")
    parser.add_argument("--top", type=int, default=6, help="tactics shown per block (default 6)")
    args = parser.parse_args()
    print("\n".join(compare(args.csvs, args.top)))


if __name__ == "__main__":
    main()
