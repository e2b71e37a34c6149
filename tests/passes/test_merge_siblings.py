"""merge_siblings: linears reading one activation become one marlin_gemm over the weights concatenated along
N (per-column global scales, concatenated biases), sliced back; golden graph, counts, numerics, what is not
merged."""
import expecttest
import pytest
import torch
from op_models import QuantLinear, capture, count_ops, listing, make_input, run_passes
from torch import nn

import nvfp4_compile
from nvfp4_compile.passes import default_passes
from nvfp4_compile.passes.folded_constants import FoldedInputs
from nvfp4_compile.passes.merge_siblings import concat_biases, per_column_scales


class Attention(nn.Module):
    """q/k/v of awkward widths (not multiples of 64) from one x, o from another activation."""

    def __init__(self, act="bf16", widths=(96, 40, 24), k=64, bias=(True, False, True)):
        super().__init__()
        self.q, self.k, self.v = (QuantLinear(k, n, act=act, bias=b, seed=10 * i)
                                  for i, (n, b) in enumerate(zip(widths, bias)))
        self.o = QuantLinear(k, 64, act=act, seed=99)

    def forward(self, x, y):
        q, k, v = self.q(x), self.k(x), self.v(x)
        return torch.cat([q, k * 2, v - 1], dim=-1), self.o(y)

    def reference(self, x, y):
        return torch.cat([self.q.w4a16_reference(x), self.k.w4a16_reference(x) * 2,
                          self.v.w4a16_reference(x) - 1], dim=-1), self.o.w4a16_reference(y)


class Linears(nn.Module):
    """self.a, self.b, ... : W4A16 QuantLinears of the given (k, n) shapes; subclasses write forward."""

    def __init__(self, *shapes):
        super().__init__()
        for i, (k, n) in enumerate(shapes):
            setattr(self, "abc"[i], QuantLinear(k, n, act="bf16", seed=i + 1))


def _compiled_outputs(out_gm, ctx, example_inputs):
    with torch.no_grad():
        return out_gm(*example_inputs, *FoldedInputs(ctx.folded).tensors())


def _through_all_passes(model, *inputs):
    """(outputs of the graph after every pass, pass context)."""
    gm, ex = capture(model, *inputs)
    out, ctx = run_passes(gm, ex, default_passes())
    return _compiled_outputs(out, ctx, ex), ctx


class TestMergeGolden(expecttest.TestCase):
    def test_qkv_merged_into_one_gemm(self):
        model = Attention(widths=(64, 32, 32), bias=(False, False, True))
        gm, ex = capture(model, make_input(3, 64), make_input(3, 64, seed=7))
        out, _ = run_passes(gm, ex, default_passes()[:3])  # linear, strip_fused_quant, merge_siblings
        self.assertExpectedInline(listing(out), """\
in0: weight u8[64, 32]
in1: weight e4m3[128, 4]
in2: weight fp32[]
in3: bf16[3, 64]
in4: weight u8[32, 32]
in5: weight e4m3[128, 4]
in6: weight fp32[]
in7: weight u8[32, 32]
in8: weight e4m3[128, 4]
in9: weight fp32[]
in10: weight bf16[32]
in11: weight u8[64, 32]
in12: weight e4m3[128, 4]
in13: weight fp32[]
in14: bf16[3, 64]
unswizzle_scales = unswizzle_scales(in1, 64, 4)  # e4m3[64, 4]
unswizzle_scales_1 = unswizzle_scales(in5, 32, 4)  # e4m3[32, 4]
unswizzle_scales_2 = unswizzle_scales(in8, 32, 4)  # e4m3[32, 4]
cat_1 = aten.cat([in0, in4, in7], 0)  # u8[128, 32]
cat_2 = aten.cat([unswizzle_scales, unswizzle_scales_1, unswizzle_scales_2], 0)  # e4m3[128, 4]
per_column_scales = per_column_scales([in2, in6, in9], [64, 32, 32])  # fp32[128]
concat_biases = concat_biases([None, None, in10], [64, 32, 32], bf16)  # bf16[128]
marlin_repack_4 = nvfp4.marlin_repack(cat_1, cat_2)
getitem_8 = getitem(marlin_repack_4, 0)  # i32[4, 256]
getitem_9 = getitem(marlin_repack_4, 1)  # u8[4, 128]
marlin_gemm_4 = nvfp4.marlin_gemm(in3, getitem_8, getitem_9, per_column_scales, concat_biases, 128, 64, 'auto')  # bf16[3, 128]
slice_1 = aten.slice(marlin_gemm_4, 1, 0, 64)  # bf16[3, 64]
slice_2 = aten.slice(marlin_gemm_4, 1, 64, 96)  # bf16[3, 32]
slice_3 = aten.slice(marlin_gemm_4, 1, 96, 128)  # bf16[3, 32]
mul = mul(slice_2, 2)  # bf16[3, 32]
sub = sub(slice_3, 1)  # bf16[3, 32]
cat = cat([slice_1, mul, sub], dim=-1)  # bf16[3, 128]
unswizzle_scales_3 = unswizzle_scales(in12, 64, 4)  # e4m3[64, 4]
marlin_repack_3 = nvfp4.marlin_repack(in11, unswizzle_scales_3)
getitem_6 = getitem(marlin_repack_3, 0)  # i32[4, 128]
getitem_7 = getitem(marlin_repack_3, 1)  # u8[4, 64]
marlin_gemm_3 = nvfp4.marlin_gemm(in14, getitem_6, getitem_7, in13, None, 64, 64, 'auto')  # bf16[3, 64]
return (cat, marlin_gemm_3)""")


@pytest.mark.parametrize("act", ["bf16", "nvfp4"])
def test_merged_output_matches_the_unmerged_gemms(act):
    model = Attention(act=act)
    x, y = make_input(2, 5, 64), make_input(2, 5, 64, seed=3)
    gm, ex = capture(model, x, y)
    merged, ctx = run_passes(gm, ex, default_passes(merge_siblings=True))
    unmerged, ctx0 = run_passes(gm, ex, default_passes(merge_siblings=False))
    assert count_ops(merged, "marlin_gemm") == 2 and count_ops(unmerged, "marlin_gemm") == 4
    assert ctx.report.count("merge_siblings") == 1 and ctx0.report.count("merge_siblings") == 0
    got, base = _compiled_outputs(merged, ctx, ex), _compiled_outputs(unmerged, ctx0, ex)
    for a, b in zip(got, base):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # same products, same per-column epilogue
    if act == "bf16":
        for a, r in zip(got, model.reference(x, y)):
            torch.testing.assert_close(a, r, atol=0, rtol=0)


def test_end_to_end_compile_and_explain_show_the_merge():
    model = Attention(act="nvfp4")
    x, y = make_input(4, 64), make_input(4, 64, seed=5)
    report = nvfp4_compile.explain(model, x, y)
    assert report.count("merge_siblings") == 1 and report.count("linear_w4a4") == 4
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(model, backend="nvfp4_marlin")(x, y)
        torch._dynamo.reset()
        base = torch.compile(model, backend=nvfp4_compile.backend_with(merge_siblings=False))(x, y)
    for a, b in zip(got, base):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_linears_on_different_inputs_or_k_are_not_merged():
    class Two(Linears):
        def forward(self, x, z):
            return self.a(x), self.b(x + 1), self.c(z)

    gm, ex = capture(Two((64, 64), (64, 64), (128, 64)), make_input(2, 64), make_input(2, 128))
    out, ctx = run_passes(gm, ex, default_passes())
    assert count_ops(out, "marlin_gemm") == 3 and ctx.report.count("merge_siblings") == 0


def test_one_weight_used_twice_on_one_input_is_merged_once():
    class Twice(Linears):
        def forward(self, x):
            return self.a(x) + self.a(x), self.b(x)

    model = Twice((64, 32), (64, 48))
    x = make_input(3, 64)
    got, ctx = _through_all_passes(model, x)
    assert ctx.report.count("merge_siblings") == 1
    torch.testing.assert_close(got[0], model.a.w4a16_reference(x) * 2, atol=0, rtol=0)
    torch.testing.assert_close(got[1], model.b.w4a16_reference(x), atol=0, rtol=0)


def test_weight_side_helpers():
    gs = per_column_scales([torch.tensor(2.0), torch.tensor(0.5)], [3, 2])
    assert gs.dtype == torch.float32 and gs.tolist() == [2.0, 2.0, 2.0, 0.5, 0.5]
    b = concat_biases([None, torch.ones(2, dtype=torch.bfloat16)], [3, 2], torch.bfloat16)
    assert b.tolist() == [0, 0, 0, 1, 1]


def test_marlin_gemm_per_column_global_scale_is_the_concatenation_of_per_tensor_gemms():
    from op_models import make_weight

    x = make_input(5, 64)
    parts, outs = [], []
    for seed, n in ((1, 40), (2, 88)):
        w, sf, d = make_weight(n, 64, seed)
        parts.append((w, sf, d, n))
        q, s = torch.ops.nvfp4.marlin_repack(w, sf)
        outs.append(torch.ops.nvfp4.marlin_gemm(x, q, s, d, None, n, 64))
    w = torch.cat([p[0] for p in parts])
    sf = torch.cat([p[1] for p in parts])
    gs = per_column_scales([p[2] for p in parts], [p[3] for p in parts])
    q, s = torch.ops.nvfp4.marlin_repack(w, sf)
    got = torch.ops.nvfp4.marlin_gemm(x, q, s, gs, None, 128, 64)
    torch.testing.assert_close(got, torch.cat(outs, -1), atol=0, rtol=0)
    with pytest.raises(ValueError, match="one float32 value or size_n=128"):
        torch.ops.nvfp4.marlin_gemm(x, q, s, gs[:5], None, 128, 64)


def test_changing_one_sibling_weight_after_compiling_is_picked_up():
    model = Attention(act="bf16")
    x, y = make_input(2, 64), make_input(2, 64, seed=9)
    compiled = torch.compile(model, backend="nvfp4_marlin")
    with torch.no_grad():
        compiled(x, y)
        donor = QuantLinear(64, 40, act="bf16", seed=77)  # new k_proj weights, written in place
        for name in ("weight", "weight_scale", "weight_scale_2"):
            getattr(model.k, name).copy_(getattr(donor, name))
        got = compiled(x, y)
    for a, r in zip(got, model.reference(x, y)):
        torch.testing.assert_close(a, r, atol=0, rtol=0)


def test_an_activation_written_in_place_between_its_readers_is_not_merged():
    class WriteBetween(Linears):
        def forward(self, x):
            x = x * 1  # a fresh tensor Dynamo lets us write
            first = self.a(x)
            x.add_(1)
            return first, self.b(x)

    model = WriteBetween((64, 32), (64, 48))
    x = make_input(3, 64)
    got, ctx = _through_all_passes(model, x)
    assert ctx.report.count("merge_siblings") == 0
    torch.testing.assert_close(got[0], model.a.w4a16_reference(x), atol=0, rtol=0)
    torch.testing.assert_close(got[1], model.b.w4a16_reference(x + 1), atol=0, rtol=0)
