"""fold_constants: golden graph after the full pipeline, what is folded (bytes, sources), the cache across
compiles, in-place refresh of stale constants, and ReleasedWeight."""
import expecttest
import pytest
import torch
from op_models import MoE, count_repacks, QuantLinear, capture, listing, make_input, make_weight, run_passes

from nvfp4_compile.formats import swizzle_scales
from nvfp4_compile.passes import default_passes
from nvfp4_compile.passes.folded_constants import FoldedInputs, ReleasedWeight, release


@pytest.fixture
def repack_calls(monkeypatch):
    return count_repacks(monkeypatch)


class TestFoldGolden(expecttest.TestCase):
    def test_w4a4_linear_after_all_passes(self):
        gm, ex = capture(QuantLinear(64, 96, act="nvfp4", bias=True), make_input(2, 5, 64))
        out, ctx = run_passes(gm, ex, default_passes())
        # The weight-only subgraphs (repack with unswizzle; d_w = alpha * g_a) became trailing "folded" inputs.
        self.assertExpectedInline(listing(out), """\
in0: weight fp32[]
in1: bf16[2, 5, 64]
in2: weight u8[96, 32]
in3: weight e4m3[128, 4]
in4: weight fp32[]
in5: weight bf16[96]
in6: folded fp32[]
in7: folded i32[4, 256]
in8: folded u8[4, 128]
marlin_gemm = nvfp4.marlin_gemm(in1, in7, in8, in6, None, 96, 64, 'auto')  # bf16[2, 5, 96]
add = add(marlin_gemm, in5)  # bf16[2, 5, 96]
return (add,)""")
        folded = ctx.report.folded
        assert [f.ops for f in folded] == ["mul", "unswizzle_scales, marlin_repack"]
        assert folded[1].bytes == 4 * 256 * 4 + 4 * 128  # int32 [K/16, 2*N_pad] + uint8 [K/16, N_pad]
        assert not any(f.cached for f in folded)


def test_folded_inputs_hold_the_values_the_graph_computed():
    model = QuantLinear(64, 96, act="bf16", bias=True)
    x = make_input(3, 64)
    gm, ex = capture(model, x)
    out, ctx = run_passes(gm, ex, default_passes())
    inputs = FoldedInputs(ctx.folded)
    q, s = torch.ops.nvfp4.marlin_repack(model.weight, _unswizzled(model))
    assert [t.shape for t in inputs.tensors()] == [q.shape, s.shape]
    assert torch.equal(inputs.tensors()[0], q) and torch.equal(inputs.tensors()[1], s)
    with torch.no_grad():
        torch.testing.assert_close(out(*ex, *inputs.tensors())[0], model.w4a16_reference(x), atol=0, rtol=0)


def _unswizzled(model):
    from nvfp4_compile.formats import unswizzle_scales

    return unswizzle_scales(model.weight_scale, model.weight.shape[0], model.weight.shape[1] // 8)


def test_second_compile_of_the_same_weights_hits_the_cache(repack_calls):
    model = MoE()
    gm, ex = capture(model, make_input(4, 64))
    _, first = run_passes(gm, ex, default_passes())
    assert len(repack_calls) == 2 and not any(f.cached for f in first.report.folded)
    gm2, ex2 = capture(model, make_input(7, 64))  # a new graph (new M) over the same weights
    _, second = run_passes(gm2, ex2, default_passes())
    assert len(repack_calls) == 2 and all(f.cached for f in second.report.folded)
    a = [e.outputs for e, _, _ in first.folded]
    b = [e.outputs for e, _, _ in second.folded]
    assert all(x is y for xs, ys in zip(a, b) for x, y in zip(xs, ys))  # the same buffers, not copies


def test_stale_constants_are_recomputed_in_place(repack_calls):
    model = QuantLinear(64, 96, act="bf16")
    gm, ex = capture(model, make_input(3, 64))
    _, ctx = run_passes(gm, ex, default_passes())
    inputs = FoldedInputs(ctx.folded)
    before = [t.clone() for t in inputs.tensors()]
    ptrs = [t.data_ptr() for t in inputs.tensors()]
    assert inputs.refresh(ex) == 0 and len(repack_calls) == 1  # unchanged weights: nothing recomputed
    w, sf, _ = make_weight(96, 64, seed=99)
    model.weight.copy_(w)
    model.weight_scale.copy_(swizzle_scales(sf))
    assert inputs.refresh(ex) == 1 and len(repack_calls) == 2
    q, s = torch.ops.nvfp4.marlin_repack(w, sf)
    assert torch.equal(inputs.tensors()[0], q) and torch.equal(inputs.tensors()[1], s)
    assert not torch.equal(inputs.tensors()[0], before[0])
    assert [t.data_ptr() for t in inputs.tensors()] == ptrs  # same memory: CUDA graphs stay valid


def test_released_weight_keeps_metadata_and_refuses_values():
    p = torch.nn.Parameter(torch.randint(0, 255, (64, 32), dtype=torch.uint8), requires_grad=False)
    assert release(p) == 64 * 32
    assert isinstance(p, ReleasedWeight) and isinstance(p, torch.nn.Parameter)
    assert p.shape == (64, 32) and p.dtype == torch.uint8 and p.untyped_storage().nbytes() == 0
    assert "ReleasedWeight" in repr(p)
    for use in (lambda: p + 1, lambda: p.copy_(torch.zeros(64, 32, dtype=torch.uint8)), lambda: p.sum(),
                lambda: p.data, lambda: p.T, lambda: p.clone()):
        with pytest.raises(RuntimeError, match="released after repacking"):
            use()
    assert release(p) == 0  # idempotent


def test_inference_tensor_sources_are_checked_by_address():
    from nvfp4_compile.passes.folded_constants import _state

    with torch.inference_mode():  # no version counter: reading _version would raise
        w = torch.zeros(4)
        w2 = torch.zeros(4)
    assert _state([w]) == ((w.data_ptr(), -1),)
    assert _state([w]) != _state([w2])


def test_constness_of_a_deep_activation_chain_needs_no_recursion():
    # A whole model's activation chain is thousands of nodes deep; a recursive walk hit the recursion limit.
    import torch.fx as fx

    from nvfp4_compile.passes.manager import PassContext

    g = fx.Graph()
    x, w = g.placeholder("x"), g.placeholder("w")
    h, c = x, w
    for _ in range(5000):
        h = g.call_function(torch.add, (h, 1))
        c = g.call_function(torch.mul, (c, 2))
    g.output((h, c))
    ctx = PassContext(example_inputs=[torch.zeros(1), torch.nn.Parameter(torch.zeros(1), requires_grad=False)])
    ctx.bind(fx.GraphModule(torch.nn.Module(), g))
    assert ctx.is_constant(h) is False and ctx.is_constant(c) is True
    assert ctx.is_constant(g.call_function(torch.add, (c, h))) is False


class SwizzleInPlace(torch.nn.Module):
    """Builds the swizzled weight scales the imperative way (zeros, then an in-place write): a weight-only
    tensor that is written after it is made. Folding it at its creation would fold the zeros."""

    def __init__(self):
        super().__init__()
        self.inner = QuantLinear(64, 96, act="nvfp4", swizzled=False)

    def forward(self, x):
        m = self.inner
        sf = m.weight_scale.view(torch.uint8)
        padded = sf.new_zeros((128, 4))
        padded[:96, :4] = sf
        swz = padded.reshape(1, 4, 32, 1, 4).permute(0, 3, 2, 1, 4).reshape(128, 4).view(torch.float8_e4m3fn)
        x_fp4, x_sf = torch.ops.nvfp4.quantize(x, m.input_global_scale, True)
        return torch.ops.nvfp4.gemm(x_fp4, m.weight, x_sf, swz, m.alpha, x.dtype, True)


def test_a_weight_only_tensor_written_in_place_is_never_folded():
    from nvfp4_compile.passes.manager import written_in_place

    model = SwizzleInPlace()
    x = make_input(3, 64)
    gm, ex = capture(model, x)
    written = {n.name for n in written_in_place(gm.graph)}
    assert "padded" in written, written
    out, ctx = run_passes(gm, ex, default_passes())
    assert not any("new_zeros" in f.ops for f in ctx.report.folded), [f.ops for f in ctx.report.folded]
    with torch.no_grad():
        got = out(*ex, *FoldedInputs(ctx.folded).tensors())[0]
        expected = model(x)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
