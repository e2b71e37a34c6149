"""`python -m nvfp4_compile demo`: quantize small models, compile them with the backend, check and time them.

For each demo model (Llama-style dense, and MoE) it prints what the backend rewrote (the explain table),
the error of the compiled NVFP4 model against the eager W4A16 reference (the same FP4 weights, dequantized
then a BF16 linear: the function the compiled graph must compute) and against the BF16 original, and
median timings of BF16 eager, BF16 torch.compile and the NVFP4 backend.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from .. import explain, quantize_model
from . import models


def median_ms(fn, device: torch.device, iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def run_one(kind: str, device: torch.device, batch: int, seq: int, iters: int) -> dict:
    torch.manual_seed(0)
    bf16 = models.build(kind).to(device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, bf16.embed_tokens.num_embeddings, (batch, seq), device=device)

    w4a16_ref = copy.deepcopy(bf16)
    quantize_model(w4a16_ref, act="bf16")  # eager reference: dequantize + BF16 linear
    nvfp4 = copy.deepcopy(bf16)
    calib = [torch.randint(0, bf16.embed_tokens.num_embeddings, (batch, seq), device=device) for _ in range(2)]
    # Blackwell-style W4A4 model code, activation scales calibrated on two random batches
    conversion = quantize_model(nvfp4, act="nvfp4", calib_inputs=calib)

    print(f"\n=== {kind}: {sum(p.numel() for p in bf16.parameters()) / 1e6:.2f}M params, input {tuple(ids.shape)}, "
          f"{device.type} ===")
    print(conversion)
    with torch.no_grad():
        report = explain(nvfp4, ids)
        print(report)
        compiled = torch.compile(nvfp4, backend="nvfp4_marlin")
        compiled_bf16 = torch.compile(bf16)
        out = compiled(ids)
        ref = w4a16_ref(ids)
        base = bf16(ids)
        w4a4 = nvfp4(ids)  # eager: what a Blackwell GPU computes (FP4 activations too)
        result = {
            "model": kind,
            "rel_err_vs_w4a16_ref": _rel_err(out, ref),
            "max_abs_err_vs_w4a16_ref": (out.float() - ref.float()).abs().max().item(),
            "rel_err_vs_bf16": _rel_err(out, base),
            "eager_w4a4_rel_err_vs_bf16": _rel_err(w4a4, base),
            "eager_bf16_ms": median_ms(lambda: bf16(ids), device, iters),
            "compiled_bf16_ms": median_ms(lambda: compiled_bf16(ids), device, iters),
            "nvfp4_marlin_ms": median_ms(lambda: compiled(ids), device, iters),
        }
    for k, v in result.items():
        print(f"  {k:26s} {v if isinstance(v, str) else f'{v:.4g}'}")
    return result


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m nvfp4_compile demo", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="llama,moe")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    results = [run_one(k, device, args.batch, args.seq, args.iters) for k in args.models.split(",")]
    bad = [r["model"] for r in results if not r["rel_err_vs_w4a16_ref"] < 2e-2]
    if bad:
        raise SystemExit(f"demo: compiled output does not match the W4A16 reference for {bad}")
    return results
