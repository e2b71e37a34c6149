"""torch.compile(backend="nvfp4_marlin") end to end on CPU: numerics, no repack in steady state, dynamic M
without recompiles, stale weights picked up, release_source_weights, training and arch decisions, modes,
graph dumps and explain()."""
import os

import pytest
import torch
from op_models import Block, MoE, QuantLinear, make_input, make_weight
from torch import nn

import nvfp4_compile
from nvfp4_compile import backend as backend_mod
from nvfp4_compile.formats import swizzle_scales
from nvfp4_compile.passes.folded_constants import ReleasedWeight


def compiled(model, reports=None, **options):
    backend = nvfp4_compile.backend_with(on_report=None if reports is None else reports.append, **options)
    return torch.compile(model, backend=backend)


def test_steady_state_calls_never_repack(repack_calls):
    model = QuantLinear(64, 96, act="bf16", bias=True)
    fast = compiled(model)
    with torch.no_grad():
        for seed in range(3):
            x = make_input(4, 64, seed=seed)
            torch.testing.assert_close(fast(x), model.w4a16_reference(x), atol=0, rtol=0)
    assert repack_calls == [(96, 32)]  # once, at compile time


@pytest.mark.parametrize("size_oblivious", [False, True])
def test_one_graph_serves_every_m(size_oblivious, repack_calls):
    """mark_dynamic: one graph for M = 2..4096 (Dynamo specializes sizes 0/1 of backed symbols); with
    torch.fx.experimental._config.backed_size_oblivious it also serves M = 1."""
    from torch.fx.experimental import _config as fx_config

    if size_oblivious and not hasattr(fx_config, "backed_size_oblivious"):
        pytest.skip("this torch has no backed_size_oblivious")
    model = Block()
    reports = []
    # Inductor's FX graph cache would hand back a graph compiled without size-obliviousness, with its
    # `2 <= M` guard: keep it out of this test (an Inductor option passed through the backend).
    fast = compiled(model, reports, **({"fx_graph_cache": False} if size_oblivious else {}))
    x, r = make_input(8, 64, seed=1), make_input(8, 64, seed=2)
    for t in (x, r):
        torch._dynamo.mark_dynamic(t, 0)
    sizes = (1, 2, 3, 17, 256, 4096) if size_oblivious else (2, 3, 17, 256, 4096)
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=size_oblivious):
        fast(x, r)
        for m in sizes:
            xm, rm = make_input(m, 64, seed=m), make_input(m, 64, seed=m + 1)
            y, res = fast(xm, rm)
            y_ref, res_ref = model.w4a16_reference(xm, rm)
            assert torch.equal(res, res_ref)
            torch.testing.assert_close(y.float(), y_ref.float(), atol=1e-3, rtol=8e-3)
    assert len(reports) == 1, [r.graph for r in reports]
    assert len(repack_calls) == 2  # both weights, once


def test_changed_weights_are_picked_up_after_compiling(repack_calls):
    model = QuantLinear(64, 96, act="nvfp4", bias=True)
    fast = compiled(model)
    x = make_input(5, 64)
    with torch.no_grad():
        fast(x)
        # In-place copy into the buffers.
        w, sf, _ = make_weight(96, 64, seed=41)
        model.weight.copy_(w)
        model.weight_scale.copy_(swizzle_scales(sf))
        torch.testing.assert_close(fast(x).float(), model.w4a16_reference(x).float(), atol=1e-2, rtol=1e-2)
        # load_state_dict of a different model (new weights and scales).
        other = QuantLinear(64, 96, act="nvfp4", bias=True, seed=7, input_scale=0.02)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x).float(), other.w4a16_reference(x).float(), atol=1e-2, rtol=1e-2)
        fast(x)
    assert len(repack_calls) == 3  # compile, copy_, load_state_dict; the last call reused the refreshed one


class ParamLinear(nn.Module):
    """Weight and scales as nn.Parameters (not buffers), W4A16."""

    def __init__(self, n=96, k=64, seed=0):
        super().__init__()
        w, sf, d = make_weight(n, k, seed)
        self.weight = nn.Parameter(w, requires_grad=False)
        self.weight_scale = nn.Parameter(sf, requires_grad=False)
        self.weight_scale_2 = nn.Parameter(d, requires_grad=False)

    def forward(self, x):
        w = torch.ops.nvfp4.dequantize(self.weight, self.weight_scale, self.weight_scale_2, x.dtype, False)
        return torch.nn.functional.linear(x, w)


def test_release_source_weights_frees_memory_and_refuses_later_changes():
    model = ParamLinear()
    x = make_input(5, 64)
    with torch.no_grad():
        want = model(x)
    reports = []
    fast = compiled(model, reports, release_source_weights=True)
    with torch.no_grad():
        y = fast(x)
        torch.testing.assert_close(y.float(), want.float(), atol=2e-2, rtol=2e-2)
        assert reports[0].released_bytes == 96 * 32 + 96 * 4  # FP4 weight + block scales
        assert isinstance(model.weight, ReleasedWeight) and model.weight.untyped_storage().nbytes() == 0
        assert not isinstance(model.weight_scale_2, ReleasedWeight)  # FP32 scales stay (tiny)
        assert torch.equal(fast(x), y)  # no recompile, same result
        y3 = fast(make_input(3, 64, seed=9))  # a recompile (new static M) folds from the cache
        assert y3.shape == (3, 96) and len(reports) == 2
    with pytest.raises(RuntimeError, match="released after repacking"):
        model.load_state_dict(ParamLinear(seed=5).state_dict())
    with pytest.raises(RuntimeError, match="released after repacking"):
        model(x)


def test_training_graphs_are_left_untouched():
    model = QuantLinear(64, 96, act="bf16", bias=True)
    model.bias.requires_grad_(True)
    reports = []
    x = make_input(4, 64)
    with pytest.warns(UserWarning, match="nvfp4_marlin: graph left untouched: grad mode is on"):
        y = compiled(model, reports)(x)
    assert reports[0].decision.startswith("graph left untouched: grad mode is on")
    assert not reports[0].rewrites
    torch.testing.assert_close(y, model(x), atol=0, rtol=0)


def test_graph_left_alone_on_fp4_hardware_runs_the_source_ops(monkeypatch):
    monkeypatch.setattr(backend_mod, "decide_rewrite", lambda target, device: (False, "left native NVFP4 ops alone"))
    model = QuantLinear(64, 96, act="nvfp4")
    reports = []
    x = make_input(4, 64)
    with torch.no_grad():
        assert torch.equal(compiled(model, reports)(x), model(x))  # the W4A4 source ops, exactly
    assert reports[0].decision == "left native NVFP4 ops alone" and not reports[0].rewrites


@pytest.mark.parametrize(
    "target, capability, rewrite",
    [("auto", (9, 0), True), ("auto", (8, 9), True), ("auto", (10, 0), False), ("auto", (12, 0), False),
     ("auto", (7, 5), False), ("force", (10, 0), True), ("sm90", (10, 0), True)],
)
def test_arch_decision_on_cuda(monkeypatch, target, capability, rewrite):
    monkeypatch.setattr(backend_mod, "_capability", lambda device: capability)
    decided, why = backend_mod.decide_rewrite(target, torch.device("cuda", 0))
    assert decided == rewrite, why
    assert f"sm{capability[0]}{capability[1]}" in why


def test_target_must_match_the_device():
    assert backend_mod.decide_rewrite("cpu", torch.device("cpu"))[0]
    assert backend_mod.decide_rewrite("auto", torch.device("cpu"))[0]
    with pytest.raises(ValueError, match="target='sm90' but the graph runs on cpu"):
        backend_mod.decide_rewrite("sm90", torch.device("cpu"))
    with pytest.raises(ValueError, match="target='cpu'"):
        backend_mod.decide_rewrite("cpu", torch.device("cuda", 0))


def test_reduce_overhead_mode_runs_on_cpu():
    model = MoE()
    x = make_input(6, 64)
    fast = torch.compile(model, backend="nvfp4_marlin", mode="reduce-overhead")
    with torch.no_grad():
        assert torch.equal(fast(x), model.w4a16_reference(x))  # cudagraphs skip CPU graphs; same numbers


def test_dump_dir_has_every_stage_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("NVFP4_COMPILE_DUMP_DIR", str(tmp_path))
    model = Block()
    with torch.no_grad():
        torch.compile(model, backend="nvfp4_marlin")(make_input(4, 64), make_input(4, 64, seed=3))
    (graph_dir,) = list(tmp_path.iterdir())
    names = sorted(os.listdir(graph_dir))
    assert names == ["00_input.py", "01_linear.py", "02_strip_fused_quant.py", "03_merge_siblings.py", "04_moe.py",
                     "05_fold_constants.py", "report.json", "report.txt"]
    assert "add_rms_norm_quant" in (graph_dir / "00_input.py").read_text()
    stripped = (graph_dir / "02_strip_fused_quant.py").read_text()
    assert "add_rms_norm_value" in stripped and "add_rms_norm_quant" not in stripped.split("class GraphModule")[1]
    assert "marlin_gemm" in (graph_dir / "05_fold_constants.py").read_text()
    assert "fused_quant" in (graph_dir / "report.txt").read_text()


def test_explain_reports_rewrites_folds_and_skips():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = QuantLinear(64, 96, act="nvfp4")
            self.b = QuantLinear(96, 64, act="bf16", swizzled=False, seed=3)
            self.moe = MoE()

        def forward(self, x):
            y = self.moe(self.b(self.a(x)))
            return y, self.a(x.float())  # an fp32 call the Marlin GEMM cannot take

    with torch.no_grad():
        report = nvfp4_compile.explain(Mixed(), make_input(4, 64))
    assert report.count("linear_w4a4") == 1 and report.count("linear_w4a16") == 1 and report.count("moe") == 1
    assert [s.reason for s in report.skipped] == ["activations are torch.float32; the Marlin kernel takes bf16/fp16"]
    assert {f.sources for f in report.folded} >= {"b.weight, b.weight_scale", "moe.w13, moe.w13_sf"}
    text = str(report)
    for expected in ("linear_w4a4", "nvfp4.marlin_moe", "marlin_repack", "left as they were", "a.weight"):
        assert expected in text
