"""End-to-end: a Llama-3-8B-shaped decoder, NVFP4 through the nvfp4_marlin backend vs BF16 torch.compile.

    python benchmarks/bench_e2e.py                 # the 8B shape (needs a GPU with ~40 GB free)
    python benchmarks/bench_e2e.py --tiny --device cpu   # a smoke run of the same code path

transformers' LlamaForCausalLM is built from a config with random weights; `quantize_model` turns every
decoder Linear to NVFP4 (lm_head and embeddings stay BF16). Both models are compiled with
mode="reduce-overhead" (CUDA graphs). Prints one table: decode step time at each batch size with a KV
cache of --cache tokens, prefill time, weight and peak memory, and logits closeness (cosine similarity of
the compiled NVFP4 model vs the eager W4A16 reference and vs BF16).
"""
from __future__ import annotations

import argparse
import copy
import gc

import torch


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the storages behind a module's parameters and buffers (a released weight holds none)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def build_config(args):
    from transformers import LlamaConfig

    if args.tiny:
        return LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096)
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=8192, rope_theta=500000.0)


def decode_step_fn(model, cfg, batch: int, cache_len: int, device, compile_kwargs, eager_model=None):
    """A compiled one-token decode step at position cache_len over a StaticCache filled with random K/V.
    eager_model (default: model) runs the one eager step that allocates the cache: a model whose FP4 sources
    were released cannot run eagerly."""
    from transformers import StaticCache

    cache = StaticCache(config=cfg, max_cache_len=cache_len + 8)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device=device)
    pos = torch.tensor([cache_len], device=device)

    def step(ids, pos):
        return model(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True).logits

    with torch.no_grad():
        (eager_model or model)(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True)  # allocates
        for layer in cache.layers:
            layer.keys.normal_()
            layer.values.normal_()
        compiled = torch.compile(step, **compile_kwargs)
        return lambda: compiled(ids, pos)


def back_to_back_ms(fn, device, steps: int = 20, reps: int = 7) -> float:
    """Decode-loop time per step: `steps` calls enqueued back to back between two CUDA events (the host's
    per-call overhead overlaps the GPU work of the previous step, as in a serving loop), median over reps."""
    import statistics

    if device.type != "cuda":
        from nvfp4_compile.demo.run import median_ms

        return median_ms(fn, device, reps)
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / steps)
    return statistics.median(times)


def closeness_rows(bf16, nvfp4, cfg, device, compile_kwargs) -> list:
    """Logits on one prompt: compiled NVFP4 vs the eager W4A16 reference (same FP4 weights) and vs BF16; and
    after 3 decode steps over a StaticCache the reference prefilled (checks the compiled steps' cache writes)."""
    import nvfp4_compile
    from transformers import StaticCache

    def cos(a, b):
        return f"{torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item():.6f}"

    with torch.no_grad():
        ids = torch.randint(0, cfg.vocab_size, (1, 128), device=device)
        ref_model = copy.deepcopy(bf16)
        nvfp4_compile.quantize_model(ref_model, act="bf16")
        ref = ref_model(ids).logits
        base = bf16(ids).logits
        out = torch.compile(nvfp4, **compile_kwargs)(ids).logits
        torch._dynamo.reset()
        rows = [("logits cosine vs W4A16 reference", cos(out, ref), ""), ("logits cosine vs BF16", cos(out, base), "")]

        caches = [StaticCache(config=cfg, max_cache_len=40) for _ in range(2)]
        prompt, steps = ids[:, :32], torch.randint(0, cfg.vocab_size, (1, 3), device=device)
        for cache in caches:
            ref_model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(32, device=device))

        def step(model, i, cache):
            pos = torch.tensor([32 + i], device=device)
            return model(input_ids=steps[:, i:i + 1], past_key_values=cache, cache_position=pos).logits

        compiled = torch.compile(step, **compile_kwargs)
        for i in range(3):
            want, got = step(ref_model, i, caches[0]), compiled(nvfp4, i, caches[1])
        torch._dynamo.reset()
        rows.append(("decode step 3 logits cosine vs W4A16 reference", cos(got, want), ""))
    del ref_model
    gc.collect()
    return rows


def decode_rows(bf16, nvfp4, cfg, device, args, batch: int, compile_kwargs) -> list:
    """Decode step at one batch size, both models: back-to-back ms/step, one synced step, peak memory."""
    from nvfp4_compile.demo.run import median_ms

    res = []
    for model, kw in zip((bf16, nvfp4), compile_kwargs):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fn = decode_step_fn(model, cfg, batch, args.cache, device, kw, eager_model=bf16)
        ms = back_to_back_ms(fn, device)
        synced = median_ms(fn, device, args.iters)
        if args.profile:
            profile_step(fn, device, f"{'nvfp4' if kw.get('backend') else 'bf16'} decode b={batch}")
        peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
        res.append((ms, peak, synced))
        torch._dynamo.reset()
    (mb, pb, sb), (mn, pn, sn) = res
    # Both models stay resident, so each peak includes the other model's tensors: printed beside it.
    other_bf16, other_nvfp4 = tensor_bytes(nvfp4) / 1e9, tensor_bytes(bf16) / 1e9
    return [(f"decode b={batch} ms/step, back to back", f"{mb:.3f}", f"{mn:.3f}  speedup {mb / mn:.2f}x"),
            (f"decode b={batch} ms, one synced step", f"{sb:.3f}", f"{sn:.3f}  speedup {sb / sn:.2f}x"),
            (f"decode b={batch} peak GB (incl. the other model's module tensors)",
             f"{pb:.2f} (incl. {other_bf16:.2f})", f"{pn:.2f} (incl. {other_nvfp4:.2f})")]


def prefill_row(bf16, nvfp4, cfg, device, args, compile_kwargs) -> tuple:
    """One prefill of --prefill tokens (no cache, last position's logits), median over a few calls."""
    from nvfp4_compile.demo.run import median_ms

    with torch.no_grad():
        ids = torch.randint(0, cfg.vocab_size, (1, args.prefill), device=device)
        res = []
        for model, kw in zip((bf16, nvfp4), compile_kwargs):
            c = torch.compile(lambda i, m=model: m(input_ids=i, use_cache=False, logits_to_keep=1).logits, **kw)
            res.append(median_ms(lambda: c(ids), device, max(3, args.iters // 4)))
            torch._dynamo.reset()
    return (f"prefill {args.prefill} ms (bf16 | nvfp4)", f"{res[0]:.2f}", f"{res[1]:.2f}  ratio {res[1] / res[0]:.2f}x")


def profile_step(fn, device, label: str, steps: int = 5) -> None:
    """Why a step costs what it does: Inductor's CUDA-graph counters, launches per step, top kernels by GPU
    and by host time."""
    from torch._dynamo.utils import counters
    from torch.profiler import ProfilerActivity, profile

    # Inductor bumps counters["inductor"]["cudagraph_skips"] when it runs a graph without CUDA graphs.
    print(f"\n[{label}] inductor counters: { {k: v for k, v in counters['inductor'].items() if 'cudagraph' in k} }")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    averages = prof.key_averages()
    calls = {e.key: e.count for e in averages}
    launches = {k: calls.get(k, 0) // steps for k in ("cudaGraphLaunch", "cudaLaunchKernel", "cuLaunchKernel",
                                                      "cudaMemsetAsync", "nvfp4::marlin_gemm")}
    print(f"[{label}] per step: {launches}")
    for key in (["self_cuda_time_total"] if device.type == "cuda" else []) + ["self_cpu_time_total"]:
        print(averages.table(sort_by=key, row_limit=14, max_name_column_width=70))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a 2-layer toy config (smoke test of the script)")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--cache", type=int, default=1024)
    p.add_argument("--prefill", type=int, default=2048)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--mode", default="reduce-overhead")
    p.add_argument("--profile", action="store_true", help="profile each decode step: CUDA-graph skips, top kernels")
    p.add_argument("--skip-prefill", action="store_true")
    p.add_argument("--no-merge", action="store_true", help="backend option merge_siblings=False")
    p.add_argument("--release", action="store_true",
                   help="backend option release_source_weights=True; adds the weight memory held after compiling")
    p.add_argument("--gemm", default="auto", help="the backend's gemm option (auto | marlin | dequant | bf16)")
    p.add_argument("--skip-closeness", action="store_true")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)  # inference benchmark: no autograd graphs anywhere
    device = torch.device(args.device)
    if args.tiny:
        args.cache, args.prefill, args.iters = min(args.cache, 64), min(args.prefill, 64), min(args.iters, 3)

    import nvfp4_compile
    from transformers import LlamaForCausalLM

    cfg = build_config(args)
    torch.manual_seed(0)
    with torch.device(device):
        bf16 = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    nvfp4 = copy.deepcopy(bf16)
    conv = nvfp4_compile.quantize_model(nvfp4, act="nvfp4")
    n_conv = len(getattr(conv, "converted", []))
    mode = None if device.type == "cpu" else args.mode
    kw_bf16 = {"mode": mode} if mode else {}
    folded = []  # each compile's report: the repacked constants it made (cached ones are shared, counted once)
    kw_nv = {"backend": nvfp4_compile.backend_with(
        mode=mode, gemm=args.gemm, merge_siblings=not args.no_merge, release_source_weights=args.release,
        on_report=lambda r: folded.extend(f for f in r.folded if not f.cached))}

    gname = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {gname}, torch {torch.__version__}, layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, "
          f"converted {n_conv} linears, mode {mode}")
    rows = []

    def emit(*new_rows):  # printed as they come: a run cut short by a time limit still reports what it measured
        for r in new_rows:
            rows.append(r)
            print(f"ROW  {r[0]}: {r[1]} | {r[2]}", flush=True)

    wb, wn = tensor_bytes(bf16), tensor_bytes(nvfp4)
    emit(("weight memory GB (bf16 | nvfp4)", f"{wb / 1e9:.2f}", f"{wn / 1e9:.2f}  ({wn / wb:.3f}x)"))
    lb, ln = tensor_bytes(bf16.model.layers), tensor_bytes(nvfp4.model.layers)
    emit(("  of which decoder layers GB", f"{lb / 1e9:.2f}", f"{ln / 1e9:.2f}  ({ln / lb:.3f}x)"))

    batches = [int(b) for b in args.batches.split(",")]
    if args.release:  # compile once up front so the sources are released before anything is measured
        with torch.no_grad():
            torch.compile(nvfp4, **kw_nv)(torch.randint(0, cfg.vocab_size, (1, 8), device=device))
        torch._dynamo.reset()
        held = tensor_bytes(nvfp4) + sum(f.bytes for f in folded)
        emit(("weights held after compiling GB (module + repacked)", f"{wb / 1e9:.2f}",
              f"{held / 1e9:.2f}  ({held / wb:.3f}x)"))
    # The headline numbers first (decode at the first batch size, prefill, closeness), then the rest.
    for i, batch in enumerate(batches):
        emit(*decode_rows(bf16, nvfp4, cfg, device, args, batch, (kw_bf16, kw_nv)))
        if i == 0:
            if not args.skip_prefill:
                emit(prefill_row(bf16, nvfp4, cfg, device, args, (kw_bf16, kw_nv)))
            if not args.skip_closeness:
                emit(*closeness_rows(bf16, nvfp4, cfg, device, kw_nv))

    w = max(len(r[0]) for r in rows)
    print(f"\n{'metric':{w}s}  {'bf16':>10s}  nvfp4_marlin")
    for name, a, b in rows:
        print(f"{name:{w}s}  {a:>10s}  {b}")


if __name__ == "__main__":
    main()
