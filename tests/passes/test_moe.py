"""moe pass: golden graph, exact equality with fused_moe's W4A16 path, W4A4 scales dropped (reported), relu2,
and experts it leaves alone."""
import expecttest
import pytest
import torch
from op_models import MoE, capture, count_ops, listing, make_input, run_passes

from nvfp4_compile.passes.moe import MoePass


class TestMoeGolden(expecttest.TestCase):
    def test_fused_moe_to_marlin_moe(self):
        gm, ex = capture(MoE(), make_input(6, 64))
        self.assertExpectedInline(listing(gm), """\
in0: weight bf16[4, 64]
in1: bf16[6, 64]
in2: weight u8[4, 64, 32]
in3: weight e4m3[4, 64, 4]
in4: weight fp32[4]
in5: weight u8[4, 64, 16]
in6: weight e4m3[4, 64, 2]
in7: weight fp32[4]
linear = linear(in1, in0)  # bf16[6, 4]
logits = linear.float()  # fp32[6, 4]
softmax = softmax(logits, dim=-1)  # fp32[6, 4]
topk = topk(softmax, 2, dim=-1)
w = getitem(topk, 0)  # fp32[6, 2]
ids = getitem(topk, 1)  # i64[6, 2]
fused_moe = nvfp4.fused_moe(in1, ids, w, in2, in3, in4, in5, in6, in7, None, None, 'silu')  # bf16[6, 64]
return (fused_moe,)""")
        out, ctx = run_passes(gm, ex, [MoePass()])
        self.assertExpectedInline(listing(out), """\
in0: weight bf16[4, 64]
in1: bf16[6, 64]
in2: weight u8[4, 64, 32]
in3: weight e4m3[4, 64, 4]
in4: weight fp32[4]
in5: weight u8[4, 64, 16]
in6: weight e4m3[4, 64, 2]
in7: weight fp32[4]
linear = linear(in1, in0)  # bf16[6, 4]
logits = linear.float()  # fp32[6, 4]
softmax = softmax(logits, dim=-1)  # fp32[6, 4]
topk = topk(softmax, 2, dim=-1)
w = getitem(topk, 0)  # fp32[6, 2]
ids = getitem(topk, 1)  # i64[6, 2]
marlin_repack = nvfp4.marlin_repack(in2, in3)
getitem = getitem(marlin_repack, 0)  # i32[4, 4, 128]
getitem_1 = getitem(marlin_repack, 1)  # u8[4, 4, 64]
marlin_repack_1 = nvfp4.marlin_repack(in5, in6)
getitem_2 = getitem(marlin_repack_1, 0)  # i32[4, 4, 128]
getitem_3 = getitem(marlin_repack_1, 1)  # u8[4, 4, 64]
marlin_moe = nvfp4.marlin_moe(in1, ids, w, getitem, getitem_1, in4, getitem_2, getitem_3, in7, 'silu', 32, 'auto')  # bf16[6, 64]
return (marlin_moe,)""")
        assert ctx.report.count("moe") == 1


@pytest.mark.parametrize("activation", ["silu", "relu2"])
@pytest.mark.parametrize("w4a4", [False, True])
def test_marlin_moe_equals_fused_moe_w4a16(activation, w4a4):
    model = MoE(activation=activation, w4a4=w4a4)
    x = make_input(9, 64, seed=5)
    gm, ex = capture(model, x)
    out, ctx = run_passes(gm, ex, [MoePass()])
    assert count_ops(out, "marlin_moe") == 1 and count_ops(out, "fused_moe") == 0
    assert count_ops(out, "marlin_repack") == 2
    with torch.no_grad():
        got = out(*ex)[0]
        # The same expert math on the same (repacked, then un-repacked) weights: bit-identical.
        assert torch.equal(got, model.w4a16_reference(x))
        if w4a4:  # the rewrite dropped activation quantization: close to the W4A4 model, not equal
            eager = model(x)
            err = (got.float() - eager.float()).abs().max()
            assert 0 < err < 0.2 * eager.float().abs().max()
    assert ("W4A4 scales dropped" in ctx.report.rewrites[0].shapes) == w4a4


def test_fp32_activations_are_left_alone():
    model = MoE()
    model.router.data = model.router.data.float()
    gm, ex = capture(model, make_input(4, 64, dtype=torch.float32))
    out, ctx = run_passes(gm, ex, [MoePass()])
    assert count_ops(out, "fused_moe") == 1 and not ctx.report.rewrites
    assert "activations are torch.float32" in ctx.report.skipped[0].reason
