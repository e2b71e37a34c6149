"""linear pass: golden graphs (W4A4 swizzled, W4A16 linear-layout with bias), every linear spelling Dynamo
records, numerics of the rewritten graph, and the layers it must leave alone with a reason."""
import expecttest
import pytest
import torch
import torch.nn.functional as F
from op_models import count_ops, QuantLinear, capture, listing, make_input, make_weight, run_passes
from torch import nn

from nvfp4_compile.passes.linear import LinearPass



class TestLinearGolden(expecttest.TestCase):
    def test_w4a4_swizzled(self):
        gm, ex = capture(QuantLinear(64, 96, act="nvfp4"), make_input(2, 5, 64))
        self.assertExpectedInline(listing(gm), """\
in0: weight fp32[]
in1: bf16[2, 5, 64]
in2: weight u8[96, 32]
in3: weight e4m3[128, 4]
in4: weight fp32[]
quantize = nvfp4.quantize(in1, in0, True)
x_fp4 = getitem(quantize, 0)  # u8[2, 5, 32]
x_sf = getitem(quantize, 1)  # e4m3[128, 4]
y = nvfp4.gemm(x_fp4, in2, x_sf, in3, in4, bf16, True)  # bf16[2, 5, 96]
return (y,)""")
        out, ctx = run_passes(gm, ex, [LinearPass()])
        self.assertExpectedInline(listing(out), """\
in0: weight fp32[]
in1: bf16[2, 5, 64]
in2: weight u8[96, 32]
in3: weight e4m3[128, 4]
in4: weight fp32[]
mul = aten.mul(in4, in0)  # fp32[]
unswizzle_scales = unswizzle_scales(in3, 96, 4)  # e4m3[96, 4]
marlin_repack = nvfp4.marlin_repack(in2, unswizzle_scales)
getitem = getitem(marlin_repack, 0)  # i32[4, 256]
getitem_1 = getitem(marlin_repack, 1)  # u8[4, 128]
marlin_gemm = nvfp4.marlin_gemm(in1, getitem, getitem_1, mul, None, 96, 64, 'auto')  # bf16[2, 5, 96]
return (marlin_gemm,)""")
        assert ctx.report.count("linear_w4a4") == 1 and not ctx.report.skipped

    def test_w4a16_linear_layout_bias(self):
        gm, ex = capture(QuantLinear(64, 96, act="bf16", swizzled=False, bias=True), make_input(7, 64))
        self.assertExpectedInline(listing(gm), """\
in0: weight u8[96, 32]
in1: weight e4m3[96, 4]
in2: weight fp32[]
in3: bf16[7, 64]
in4: weight bf16[96]
w = nvfp4.dequantize(in0, in1, in2, bf16, False)  # bf16[96, 64]
linear = linear(in3, w, in4)  # bf16[7, 96]
return (linear,)""")
        out, ctx = run_passes(gm, ex, [LinearPass()])
        self.assertExpectedInline(listing(out), """\
in0: weight u8[96, 32]
in1: weight e4m3[96, 4]
in2: weight fp32[]
in3: bf16[7, 64]
in4: weight bf16[96]
marlin_repack = nvfp4.marlin_repack(in0, in1)
getitem = getitem(marlin_repack, 0)  # i32[4, 256]
getitem_1 = getitem(marlin_repack, 1)  # u8[4, 128]
marlin_gemm = nvfp4.marlin_gemm(in3, getitem, getitem_1, in2, in4, 96, 64, 'auto')  # bf16[7, 96]
return (marlin_gemm,)""")
        assert ctx.report.count("linear_w4a16") == 1


class AllSpellings(nn.Module):
    """One dequantized weight used through every linear spelling Dynamo records."""

    def __init__(self):
        super().__init__()
        w, sf, d = make_weight(48, 32, seed=3)
        self.register_buffer("w", w)
        self.register_buffer("sf", sf)
        self.register_buffer("d", d)
        self.bias = nn.Parameter(make_input(48, seed=4), requires_grad=False)

    def forward(self, x):
        w = torch.ops.nvfp4.dequantize(self.w, self.sf, self.d, x.dtype, False)
        x2 = x.reshape(-1, x.shape[-1])
        outs = [
            F.linear(x, w),
            F.linear(x, w, self.bias),
            x @ w.T,
            x @ w.mT,
            torch.matmul(x, w.permute(1, 0)),
            torch.mm(x2, w.t()),
            torch.addmm(self.bias, x2, w.transpose(0, 1)),
        ]
        return [o.reshape(-1, 48) for o in outs]


def test_every_linear_spelling_is_rewritten_and_matches_eager():
    model = AllSpellings()
    x = make_input(2, 3, 32)
    gm, ex = capture(model, x)
    out, ctx = run_passes(gm, ex, [LinearPass()])
    assert ctx.report.count("linear_w4a16") == 7 and not ctx.report.skipped
    assert count_ops(out, "marlin_gemm") == 7
    assert count_ops(out, "marlin_repack") == 1  # one repack shared by all seven uses
    assert count_ops(out, "dequantize") == 0
    # Compiled W4A16 vs the eager W4A16 model (F.linear on the dequantized BF16 weight): same values up to
    # the BF16 rounding of the weight the eager path makes.
    with torch.no_grad():
        got, want = out(*ex), model(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), atol=2e-2, rtol=2e-2)


def test_w4a4_rewrite_is_close_to_w4a4_and_equals_w4a16_math():
    model = QuantLinear(64, 96, act="nvfp4", bias=True)
    x = make_input(4, 64)
    gm, ex = capture(model, x)
    out, ctx = run_passes(gm, ex, [LinearPass()])
    with torch.no_grad():
        w4a16 = out(*ex)[0]
        w4a4 = model(x)
    # The rewrite drops activation quantization: close to the W4A4 model, not equal.
    err = (w4a16.float() - w4a4.float()).abs().max()
    assert 0 < err < 0.1 * w4a4.float().abs().max()
    # ... and it is exactly the W4A16 math (FP32 GEMM on dequantized weights, one rounding) up to d_w's
    # FP32 rounding (alpha * g_a) and the bias add in BF16.
    torch.testing.assert_close(w4a16.float(), model.w4a16_reference(x).float(), atol=1e-2, rtol=1e-2)


def test_quantize_kept_when_fp4_activation_has_other_users():
    class TwoUses(QuantLinear):
        def forward(self, x):
            x_fp4, x_sf = torch.ops.nvfp4.quantize(x, self.input_global_scale, True)
            y = torch.ops.nvfp4.gemm(x_fp4, self.weight, x_sf, self.weight_scale, self.alpha, x.dtype, True)
            return y, x_fp4

    gm, ex = capture(TwoUses(64, 96), make_input(4, 64))
    out, ctx = run_passes(gm, ex, [LinearPass()])
    assert count_ops(out, "marlin_gemm") == 1 and count_ops(out, "nvfp4.quantize") == 1
    assert count_ops(out, "nvfp4.gemm") == 0


class FP4Input(QuantLinear):
    """The FP4 activation is a graph input: dequantized at scale 1 (exact), the GEMM applies alpha."""

    def forward(self, x_fp4, x_sf):
        return torch.ops.nvfp4.gemm(x_fp4, self.weight, x_sf, self.weight_scale, self.alpha, torch.bfloat16, True)


def test_fp4_activation_from_graph_input_keeps_w4a4_numerics():
    model = FP4Input(64, 96)
    x_fp4, x_sf = torch.ops.nvfp4.quantize(make_input(5, 64), model.input_global_scale, True)
    gm, ex = capture(model, x_fp4, x_sf)
    out, ctx = run_passes(gm, ex, [LinearPass()])
    assert ctx.report.count("linear_w4a4") == 1 and count_ops(out, "nvfp4.dequantize") == 1
    with torch.no_grad():
        # Same math as nvfp4::gemm (exact dequantized operands, FP32 accumulation): equal up to summation order.
        torch.testing.assert_close(out(*ex)[0], model(x_fp4, x_sf), atol=0, rtol=1e-2)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("fp32", "activations are torch.float32"),
        ("weight_input", "weight is not a parameter/buffer"),
        ("out_dtype", "out_dtype torch.float32 differs"),
    ],
)
def test_unsupported_layers_are_left_alone_with_a_reason(case, reason):
    model = QuantLinear(64, 96, act="nvfp4")
    if case == "fp32":
        inputs = (make_input(4, 64, dtype=torch.float32),)
    elif case == "weight_input":
        src = model

        class WeightArg(nn.Module):
            def forward(self, x, w):
                x_fp4, x_sf = torch.ops.nvfp4.quantize(x, src.input_global_scale, True)
                return torch.ops.nvfp4.gemm(x_fp4, w, x_sf, src.weight_scale, src.alpha, x.dtype, True)

        model, inputs = WeightArg(), (make_input(4, 64), model.weight.clone())
    else:
        class Fp32Out(QuantLinear):
            def forward(self, x):
                x_fp4, x_sf = torch.ops.nvfp4.quantize(x, self.input_global_scale, True)
                return torch.ops.nvfp4.gemm(x_fp4, self.weight, x_sf, self.weight_scale, self.alpha, torch.float32, True)

        model, inputs = Fp32Out(64, 96), (make_input(4, 64),)
    gm, ex = capture(model, *inputs)
    out, ctx = run_passes(gm, ex, [LinearPass()])
    assert not ctx.report.rewrites
    assert len(ctx.report.skipped) == 1 and reason in ctx.report.skipped[0].reason, ctx.report.skipped
    assert count_ops(out, "nvfp4.gemm") == 1 and count_ops(out, "marlin") == 0


def test_fp32_weight_only_and_non_linear_uses_are_reported():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            w, sf, d = make_weight(48, 32, seed=3)
            self.register_buffer("w", w)
            self.register_buffer("sf", sf)
            self.register_buffer("d", d)

        def forward(self, x):
            w = torch.ops.nvfp4.dequantize(self.w, self.sf, self.d, torch.float32, False)
            return F.linear(x, w), w.sum()

    gm, ex = capture(Odd(), make_input(3, 32, dtype=torch.float32))
    out, ctx = run_passes(gm, ex, [LinearPass()])
    reasons = sorted(s.reason for s in ctx.report.skipped)
    assert not ctx.report.rewrites
    assert any("activations are torch.float32" in r for r in reasons)
    assert any("not a linear" in r for r in reasons)


def test_gemm_bf16_option_folds_a_dense_weight():
    model = QuantLinear(64, 96, act="nvfp4", bias=True)
    x = make_input(4, 64)
    gm, ex = capture(model, x)
    out, ctx = run_passes(gm, ex, [LinearPass()], gemm="bf16")
    assert count_ops(out, "marlin") == 0 and count_ops(out, "aten.linear") == 1
    assert ctx.report.rewrites[0].target == "aten.linear (bf16 weight)"
    with torch.no_grad():
        torch.testing.assert_close(out(*ex)[0].float(), model.w4a16_reference(x).float(), atol=2e-2, rtol=2e-2)


def test_stacked_weight_outside_fused_moe_is_reported():
    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            parts = [make_weight(48, 32, seed=s) for s in (1, 2)]
            self.register_buffer("w", torch.stack([p[0] for p in parts]))
            self.register_buffer("sf", torch.stack([p[1] for p in parts]))
            self.register_buffer("d", parts[0][2])

        def forward(self, x):
            w = torch.ops.nvfp4.dequantize(self.w, self.sf, self.d, x.dtype, False)
            return torch.bmm(x, w.transpose(1, 2))

    gm, ex = capture(Stacked(), make_input(2, 3, 32))
    out, ctx = run_passes(gm, ex, [LinearPass()])
    assert not ctx.report.rewrites and count_ops(out, "marlin") == 0
    assert "is not 2-D" in ctx.report.skipped[0].reason
