"""strip_fused_quant: golden graphs of a fused-producer decoder MLP after linear and after strip, the FP4
copy kept for consumers that were not rewritten (bit-identical), numerics, and producers left alone."""
import expecttest
import torch
from op_models import count_ops, Block, capture, listing, make_input, run_passes
from torch import nn

from nvfp4_compile.passes.linear import LinearPass
from nvfp4_compile.passes.strip_fused_quant import StripFusedQuant



def block_inputs():
    return make_input(2, 3, 64, seed=1), make_input(2, 3, 64, seed=2)


class TestStripGolden(expecttest.TestCase):
    def test_block_after_linear_then_strip(self):
        gm, ex = capture(Block(), *block_inputs())
        after_linear, _ = run_passes(gm, ex, [LinearPass()])
        # The linear pass bridges each fused producer's FP4 output to its GEMM with a dequantize ...
        self.assertExpectedInline(listing(after_linear), """\
in0: weight bf16[64]
in1: weight fp32[]
in2: bf16[2, 3, 64]
in3: bf16[2, 3, 64]
in4: weight u8[128, 32]
in5: weight e4m3[128, 4]
in6: weight fp32[]
in7: weight fp32[]
in8: weight u8[64, 32]
in9: weight e4m3[128, 4]
in10: weight fp32[]
add_rms_norm_quant = nvfp4.add_rms_norm_quant(in2, in3, in0, in1, 1e-06)
h_fp4 = getitem(add_rms_norm_quant, 0)  # u8[2, 3, 32]
res = getitem(add_rms_norm_quant, 1)  # bf16[2, 3, 64]
h_sf = getitem(add_rms_norm_quant, 2)  # e4m3[128, 4]
truediv = truediv(in6, in1)  # fp32[]
reciprocal = aten.reciprocal(in1)  # fp32[]
dequantize = nvfp4.dequantize(h_fp4, h_sf, reciprocal, bf16, True)  # bf16[2, 3, 64]
mul = aten.mul(truediv, in1)  # fp32[]
unswizzle_scales = unswizzle_scales(in5, 128, 4)  # e4m3[128, 4]
marlin_repack = nvfp4.marlin_repack(in4, unswizzle_scales)
getitem = getitem(marlin_repack, 0)  # i32[4, 256]
getitem_1 = getitem(marlin_repack, 1)  # u8[4, 128]
marlin_gemm = nvfp4.marlin_gemm(dequantize, getitem, getitem_1, mul, None, 128, 64, 'auto')  # bf16[2, 3, 128]
silu_and_mul_quant = nvfp4.silu_and_mul_quant(marlin_gemm, in7)
a_fp4 = getitem(silu_and_mul_quant, 0)  # u8[2, 3, 32]
a_sf = getitem(silu_and_mul_quant, 1)  # e4m3[128, 4]
truediv_1 = truediv(in10, in7)  # fp32[]
reciprocal_1 = aten.reciprocal(in7)  # fp32[]
dequantize_1 = nvfp4.dequantize(a_fp4, a_sf, reciprocal_1, bf16, True)  # bf16[2, 3, 64]
mul_1 = aten.mul(truediv_1, in7)  # fp32[]
unswizzle_scales_1 = unswizzle_scales(in9, 64, 4)  # e4m3[64, 4]
marlin_repack_1 = nvfp4.marlin_repack(in8, unswizzle_scales_1)
getitem_2 = getitem(marlin_repack_1, 0)  # i32[4, 128]
getitem_3 = getitem(marlin_repack_1, 1)  # u8[4, 64]
marlin_gemm_1 = nvfp4.marlin_gemm(dequantize_1, getitem_2, getitem_3, mul_1, None, 64, 64, 'auto')  # bf16[2, 3, 64]
return (marlin_gemm_1, res)""")
        after_strip, ctx = run_passes(gm, ex, [LinearPass(), StripFusedQuant()])
        # ... which strip replaces with the BF16 value the producer would have quantized.
        self.assertExpectedInline(listing(after_strip), """\
in0: weight bf16[64]
in1: weight fp32[]
in2: bf16[2, 3, 64]
in3: bf16[2, 3, 64]
in4: weight u8[128, 32]
in5: weight e4m3[128, 4]
in6: weight fp32[]
in7: weight fp32[]
in8: weight u8[64, 32]
in9: weight e4m3[128, 4]
in10: weight fp32[]
add_rms_norm_value = add_rms_norm_value(in2, in3, in0, 1e-06)
getitem_4 = getitem(add_rms_norm_value, 0)  # bf16[2, 3, 64]
getitem_5 = getitem(add_rms_norm_value, 1)  # bf16[2, 3, 64]
truediv = truediv(in6, in1)  # fp32[]
mul = aten.mul(truediv, in1)  # fp32[]
unswizzle_scales = unswizzle_scales(in5, 128, 4)  # e4m3[128, 4]
marlin_repack = nvfp4.marlin_repack(in4, unswizzle_scales)
getitem = getitem(marlin_repack, 0)  # i32[4, 256]
getitem_1 = getitem(marlin_repack, 1)  # u8[4, 128]
marlin_gemm = nvfp4.marlin_gemm(getitem_4, getitem, getitem_1, mul, None, 128, 64, 'auto')  # bf16[2, 3, 128]
silu_and_mul_value = silu_and_mul_value(marlin_gemm)  # bf16[2, 3, 64]
truediv_1 = truediv(in10, in7)  # fp32[]
mul_1 = aten.mul(truediv_1, in7)  # fp32[]
unswizzle_scales_1 = unswizzle_scales(in9, 64, 4)  # e4m3[64, 4]
marlin_repack_1 = nvfp4.marlin_repack(in8, unswizzle_scales_1)
getitem_2 = getitem(marlin_repack_1, 0)  # i32[4, 128]
getitem_3 = getitem(marlin_repack_1, 1)  # u8[4, 64]
marlin_gemm_1 = nvfp4.marlin_gemm(silu_and_mul_value, getitem_2, getitem_3, mul_1, None, 64, 64, 'auto')  # bf16[2, 3, 64]
return (marlin_gemm_1, getitem_5)""")
        assert ctx.report.count("fused_quant") == 2 and ctx.report.count("linear_w4a4") == 2


def test_block_matches_w4a16_reference_and_is_close_to_w4a4():
    model = Block()
    x, r = block_inputs()
    gm, ex = capture(model, x, r)
    out, _ = run_passes(gm, ex, [LinearPass(), StripFusedQuant()])
    assert count_ops(out, "_quant") == 0 and count_ops(out, "dequantize") == 0
    with torch.no_grad():
        y, res = out(*ex)
        y_ref, res_ref = model.w4a16_reference(x, r)
        y_w4a4, res_w4a4 = model(x, r)
    assert torch.equal(res, res_ref) and torch.equal(res, res_w4a4)  # residual_out is kept exactly
    # Same FP32 math as the reference except d_w = (d_w / g) * g in FP32: at most one BF16 rounding step.
    torch.testing.assert_close(y.float(), y_ref.float(), atol=1e-3, rtol=8e-3)
    err = (y.float() - y_w4a4.float()).abs().max()
    assert 0 < err < 0.5 * y_w4a4.float().abs().max()  # W4A16 rewrite of a W4A4 model: close, not equal


def test_fp4_consumer_that_stays_gets_a_bit_identical_requantized_copy():
    model = Block(extra_fp4_consumer=True)
    x, r = block_inputs()
    gm, ex = capture(model, x, r)
    out, ctx = run_passes(gm, ex, [LinearPass(), StripFusedQuant()])
    assert count_ops(out, "add_rms_norm_quant") == 0 and count_ops(out, "nvfp4.quantize") == 1
    assert any("FP4 consumer" in n for n in ctx.report.notes)
    with torch.no_grad():
        _, _, h_fp4, h_sf = out(*ex)
        _, _, want_fp4, want_sf = model(x, r)
    assert torch.equal(h_fp4, want_fp4)
    assert torch.equal(h_sf.view(torch.uint8), want_sf.view(torch.uint8))


def test_producer_feeding_no_rewritten_gemm_is_left_alone():
    class NormOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.ones(64, dtype=torch.bfloat16))
            self.register_buffer("g", torch.tensor(500.0))

        def forward(self, x):
            return torch.ops.nvfp4.rms_norm_quant(x, self.w, self.g, 1e-6)

    gm, ex = capture(NormOnly(), make_input(4, 64))
    out, ctx = run_passes(gm, ex, [LinearPass(), StripFusedQuant()])
    assert count_ops(out, "rms_norm_quant") == 1
    assert [s.reason for s in ctx.report.skipped] == ["its FP4 output feeds no rewritten GEMM"]


def test_each_producer_kind_is_stripped():
    """rms_norm_quant, relu2_quant (and the two in Block) each feed a GEMM and disappear."""

    class Producers(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            b = self.block
            h, h_sf = torch.ops.nvfp4.rms_norm_quant(x, b.norm_w, b.g1, 1e-6)
            y = torch.ops.nvfp4.gemm(h, b.w2, h_sf, b.w2_sf, b.w2_d / b.g1, x.dtype)
            a, a_sf = torch.ops.nvfp4.relu2_quant(y, b.g2)
            return torch.ops.nvfp4.gemm(a, b.w2, a_sf, b.w2_sf, b.w2_d / b.g2, x.dtype)

    model = Producers()
    x = make_input(5, 64)
    gm, ex = capture(model, x)
    out, ctx = run_passes(gm, ex, [LinearPass(), StripFusedQuant()])
    assert ctx.report.count("fused_quant") == 2 and count_ops(out, "_quant") == 0
    assert count_ops(out, "rms_norm_value") == 1 and count_ops(out, "relu2_value") == 1
