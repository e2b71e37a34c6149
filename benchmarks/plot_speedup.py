"""Plot speedup over BF16 cuBLAS vs M, one panel per (N, K), from bench_tactics.py's or bench_gemm.py's CSV.

    python benchmarks/plot_speedup.py bench.csv [--out docs/gemm_speedup.png]

Lines: auto, marlin (the kernel's own config choice), dequant (+ cuBLAS; bench_tactics.py only), and the memory
floor's bound on speedup (cuBLAS time / floor time); y = cublas_us / tactic_us, so above 1 is faster than BF16.
"""
from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict

SERIES = [("auto_us", "auto", "-", "o"), ("marlin_us", "marlin (config by M)", "--", "s"),
          ("dequant_us", "dequant + cuBLAS", ":", "^"), ("floor_us", "memory floor", "-.", None)]


def read_rows(path: str) -> dict[tuple[int, int], list[dict]]:
    shapes = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            shapes[(int(row["n"]), int(row["k"]))].append(row)
    if not shapes:
        raise ValueError(f"{path}: no rows")
    for rows in shapes.values():
        rows.sort(key=lambda r: int(r["m"]))
    return shapes


def plot(shapes, out: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(shapes))
    nrows = (len(shapes) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False, sharey=True)
    for ax, ((n, k), rows) in zip(axes.flat, shapes.items()):
        ms = [int(r["m"]) for r in rows]
        for column, label, style, marker in SERIES:
            if column not in rows[0]:
                continue
            speedup = [float(r["cublas_us"]) / float(r[column]) for r in rows]
            ax.plot(ms, speedup, style, marker=marker, label=label, color=None if marker else "grey")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(f"N={n}, K={k}")
        ax.set_xlabel("M (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("speedup over BF16 cuBLAS")
    for ax in list(axes.flat)[len(shapes):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "gemm_speedup.png"))
    parser.add_argument("--title", default="", help="figure title, e.g. the device")
    args = parser.parse_args()
    plot(read_rows(args.csv), args.out, args.title)


if __name__ == "__main__":
    main()
