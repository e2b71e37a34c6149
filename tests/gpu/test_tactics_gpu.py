"""GEMM tactics on the GPU (ops/gemm_tactics.py): the dequantize kernel is exact, every tactic matches the
reference, gemm="auto" runs what it profiled, CUDA graph capture never profiles, and a reduce-overhead
compile with dynamic M profiles each M bucket in the eager warm-up before capturing it. Skips without CUDA."""
import logging

import pytest
import torch
import torch.nn.functional as F

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*
from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4
from nvfp4_compile.formats.marlin import marlin_dequantize
from nvfp4_compile.ops import gemm_tactics
from nvfp4_compile.ops.tactics import TacticCache, TacticSelector

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ops = torch.ops.nvfp4
DEV = "cuda"
ALL_E4M3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
FINITE_E4M3 = ALL_E4M3[~torch.isnan(ALL_E4M3.float())]


@pytest.fixture
def fresh_selector(tmp_path):
    """A process-wide selector with an empty cache in tmp_path, restored afterwards."""
    sel = TacticSelector(gemm_tactics.tactic_set(), gemm_tactics.library_version(), TacticCache(str(tmp_path)))
    gemm_tactics.set_selector(sel)
    yield sel
    gemm_tactics.set_selector(None)


def fp32_reference(x, w, sf, gs, bias=None):
    wd = dequantize_nvfp4(w, sf, torch.ones((), device=w.device), torch.float32)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out = (x.float() @ wd.T) * gs.float()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return out if bias is None else out + bias.float()


def rel_err(out, ref):
    return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def test_tactic_set_lists_every_kernel_config_and_dequant():
    """Every config, each wgmma and decode config once more with its splits fitted to resident clusters (the
    decode ones only for the M they are built for), then dequant."""
    ts = gemm_tactics.tactic_set()
    configs = list(torch.ops.nvfp4_C.marlin_gemm_configs())
    fitted = [f"marlin.{c}.fit" for c in configs if c.startswith(gemm_tactics.FIT_CONFIG_PREFIXES)]
    assert {"marlin.gemv8b.fit", "marlin.wg64x512.fit"} <= set(fitted)
    assert ts.names == (*(f"marlin.{c}" for c in configs), *fitted, "dequant") and ts.fallback.name == "marlin"
    large_m = gemm_tactics.ProblemKey("dev", 4096, 4096, 256, "bf16")
    hopper = torch.cuda.get_device_capability()[0] == 9  # split-K in clusters: Hopper only
    assert not ts.get("marlin.gemv8b.fit").applies(large_m) and ts.get("marlin.wg64x512.fit").applies(large_m) == hopper
    assert len(ts.build) == 16 and ts.signature


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", [(64, 16), (100, 240), (130, 1856), (256, 4096), (4096, 512)])
def test_dequantize_kernel_is_bit_identical_to_marlin_dequantize(dtype, n, k):
    """Every finite E4M3 block scale (signs folded, zeros, subnormals) over random nibbles, padded N and K,
    an arbitrary global scale: the same bits as the CPU reference."""
    g = torch.Generator().manual_seed(n * 31 + k)
    w = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    sf = FINITE_E4M3[torch.randint(0, FINITE_E4M3.numel(), (n, k // 16), generator=g)]
    q, s = ops.marlin_repack(w, sf)
    gs = torch.tensor(0.01731, dtype=torch.float32)
    ref = marlin_dequantize(q, s, gs, n, k, dtype)
    torch.cuda.synchronize()
    poison = torch.full((n * k,), float("nan"), dtype=dtype, device=DEV)
    del poison  # the output likely reuses this NaN block: unwritten elements would show
    out = gemm_tactics.dequantize_weight(q.to(DEV), s.to(DEV), gs.to(DEV), n, k, dtype)
    assert out.shape == (n, k) and out.dtype == dtype
    assert torch.equal(out.cpu().view(torch.int16), ref.view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k,with_bias", [(1, 4096, 4096, False), (33, 100, 240, True), (300, 192, 1856, True),
                                             (2048, 1024, 512, False)])
def test_every_tactic_matches_the_reference(dtype, m, n, k, with_bias):
    g = torch.Generator(device=DEV).manual_seed(m * 7 + n)
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV, generator=g) * 0.05)
    q, s = ops.marlin_repack(w, sf)
    x = torch.randn(m, k, device=DEV, generator=g).to(dtype)
    bias = torch.randn(n, device=DEV, generator=g).to(dtype) if with_bias else None
    ref = fp32_reference(x, w, sf, gs, bias)
    ts = gemm_tactics.tactic_set()
    for tactic in (*ts.tactics, ts.fallback):
        out = tactic.run(x, q, s, gs, bias, n, k)
        assert out.shape == (m, n) and out.dtype == dtype and not torch.isnan(out).any(), tactic.name
        assert rel_err(out, ref) < 1e-2, (tactic.name, rel_err(out, ref))
    # dequant is exactly F.linear on the marlin_dequantize weight (the eager W4A16 NVFP4Linear computation)
    w_deq = marlin_dequantize(q, s, gs, n, k, dtype)
    assert torch.equal(ts.get("dequant").run(x, q, s, gs, bias, n, k), F.linear(x, w_deq, bias))


def test_forced_choices_run_their_tactic(fresh_selector):
    n, k = 512, 1024
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    x = torch.randn(5, 3, k, device=DEV).to(torch.bfloat16)
    x2 = x.reshape(-1, k)
    ts = gemm_tactics.tactic_set()
    assert torch.equal(ops.marlin_gemm(x, q, s, gs, None, n, k, "marlin").reshape(15, n),
                       ts.fallback.run(x2, q, s, gs, None, n, k))
    assert torch.equal(ops.marlin_gemm(x, q, s, gs, None, n, k, "dequant").reshape(15, n),
                       ts.get("dequant").run(x2, q, s, gs, None, n, k))
    assert fresh_selector.choice(gemm_tactics.problem_key(x2, n, k)) is None  # forced choices never profile


def test_tactic_choices_lists_what_auto_profiled(fresh_selector):
    n, k = 4096, 4096
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    x = torch.randn(3, k, device=DEV).to(torch.bfloat16)
    ops.marlin_gemm(x, q, s, gs, None, n, k, "auto")
    key = gemm_tactics.problem_key(x, n, k)
    report = nvfp4_compile.tactic_choices()
    rows = [r for r in report.rows if r.op == "marlin_gemm"]
    assert report.device == key.device and [r.problem for r in rows] == [key.entry_name()]
    assert rows[0].choice == fresh_selector.choice(key) and rows[0].choice.best in str(report)


def test_auto_profiles_once_and_runs_its_choice(fresh_selector):
    n, k = 4096, 4096
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    for m in (1, 100, 4096):
        x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
        rng = torch.cuda.get_rng_state()
        out = ops.marlin_gemm(x, q, s, gs, None, n, k, "auto")
        assert torch.equal(torch.cuda.get_rng_state(), rng)  # profiling leaves the global RNG alone
        choice = fresh_selector.choice(gemm_tactics.problem_key(x, n, k))
        assert choice is not None and set(choice.times_ms) | set(choice.failed) == set(gemm_tactics.tactic_set().names)
        # Nothing failed; only a tactic not built for this M (the decode kernel past M = 8 or 16) was left out.
        assert all(reason.startswith("not applicable") for reason in choice.failed.values())
        too_large = [c for c, max_m in gemm_tactics.CONFIG_MAX_M.items() if m > max_m]
        assert set(choice.failed) == {f"marlin.{c}{fit}" for c in too_large for fit in ("", ".fit")}
        assert min(choice.times_ms.values()) == choice.times_ms[choice.best]
        chosen = gemm_tactics.tactic_set().get(choice.best)
        assert torch.equal(out, chosen.run(x, q, s, gs, None, n, k))
        assert rel_err(out, fp32_reference(x, w, sf, gs)) < 1e-2


def _capture(fn):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            out = fn()
    torch.cuda.current_stream().wait_stream(stream)
    return graph, out


def test_capture_uses_cached_choice_or_fallback_never_profiles(fresh_selector, caplog):
    n, k = 1024, 2048
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, device=DEV))
    q, s = ops.marlin_repack(w, sf)
    ts = gemm_tactics.tactic_set()
    # Seen before capture (the eager warm-up profiles): the capture replays the choice.
    x = torch.randn(512, k, device=DEV).to(torch.bfloat16)
    eager = ops.marlin_gemm(x, q, s, gs, None, n, k, "auto")
    best = fresh_selector.choice(gemm_tactics.problem_key(x, n, k)).best
    graph, out = _capture(lambda: ops.marlin_gemm(x, q, s, gs, None, n, k, "auto"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager) and torch.equal(out, ts.get(best).run(x, q, s, gs, None, n, k))
    # First seen during capture: the fallback, nothing profiled or cached.
    x7 = torch.randn(7, k, device=DEV).to(torch.bfloat16)
    ops.marlin_gemm(x7, q, s, gs, None, n, k, "marlin")  # kernel attributes set outside capture
    with caplog.at_level(logging.INFO, logger="nvfp4_compile.tactics"):
        graph7, out7 = _capture(lambda: ops.marlin_gemm(x7, q, s, gs, None, n, k, "auto"))
    graph7.replay()
    torch.cuda.synchronize()
    assert fresh_selector.choice(gemm_tactics.problem_key(x7, n, k)) is None
    assert "while capturing" in caplog.text
    assert torch.equal(out7, ts.fallback.run(x7, q, s, gs, None, n, k))


def test_reduce_overhead_with_dynamic_m_profiles_each_bucket_before_capture(fresh_selector, monkeypatch):
    """mode="reduce-overhead", dynamic M: cudagraph trees run each new M eagerly (warm-up: profiles) before
    recording it, so every choice made during capture is a cached one."""
    from nvfp4_compile import NVFP4Linear, backend_with

    calls = []  # (capturing, cached) for every auto choice
    real_choose = gemm_tactics.choose

    def choose(x2, qweight, scales, global_scale, bias, size_n, size_k, gemm="auto"):
        key = gemm_tactics.problem_key(x2, size_n, size_k)
        calls.append((torch.cuda.is_current_stream_capturing(), fresh_selector.choice(key) is not None, key.m_bucket))
        return real_choose(x2, qweight, scales, global_scale, bias, size_n, size_k, gemm)

    monkeypatch.setattr(gemm_tactics, "choose", choose)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        NVFP4Linear.from_linear(torch.nn.Linear(1024, 2048).to(DEV, torch.bfloat16), act="bf16"),
        torch.nn.SiLU(),
        NVFP4Linear.from_linear(torch.nn.Linear(2048, 512, bias=False).to(DEV, torch.bfloat16), act="bf16"),
    )
    compiled = torch.compile(model, backend=backend_with(mode="reduce-overhead", gemm="auto"), dynamic=True)
    with torch.no_grad():
        for m in (3, 40, 300, 40, 3, 300, 40):
            x = torch.randn(m, 1024, device=DEV).to(torch.bfloat16)
            out = compiled(x).clone()
            ref = model(x)  # eager W4A16: dequantize + F.linear
            assert rel_err(out, ref.float()) < 1e-2, m
    captured = [c for c in calls if c[0]]
    assert captured, f"no marlin_gemm ran under CUDA graph capture: {calls}"
    assert all(cached for _, cached, _ in captured), calls
    assert {b for _, _, b in captured} == {4, 64, 512}
    for m in (3, 40, 300):
        for n, k in ((2048, 1024), (512, 2048)):
            x = torch.empty(m, k, device=DEV, dtype=torch.bfloat16)
            assert fresh_selector.choice(gemm_tactics.problem_key(x, n, k)) is not None, (m, n, k)
    torch._dynamo.reset()
