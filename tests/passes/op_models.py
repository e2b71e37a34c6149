"""Small models written directly with the nvfp4 source ops (independent of nvfp4_compile.nn), the helpers that
capture their Dynamo graphs, and eager W4A16 references the compiled outputs are compared with."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nvfp4_compile.formats import dequantize_nvfp4, quantize_nvfp4, swizzle_scales
from nvfp4_compile.passes import PassContext, PassManager
from nvfp4_compile.passes.graph_utils import clone_graph_module, graph_listing, short_target

BF16 = torch.bfloat16


def make_weight(n: int, k: int, seed: int, scale: float = 0.05):
    """Random NVFP4 weight: (w_fp4 uint8 [n, k/2], w_sf e4m3 [n, k/16], d_w fp32 scalar decode)."""
    gen = torch.Generator().manual_seed(seed)
    return quantize_nvfp4(torch.randn(n, k, generator=gen) * scale)


def make_input(*shape, seed: int = 100, dtype=BF16):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype)


class QuantLinear(nn.Module):
    """act="nvfp4": quantize(x, g_a) -> nvfp4::gemm (W4A4); act="bf16": linear(x, dequantize(w)) (W4A16)."""

    def __init__(self, k, n, act="nvfp4", swizzled=True, bias=False, seed=0, input_scale=0.01):
        super().__init__()
        w, sf, d = make_weight(n, k, seed)
        self.act, self.swizzled = act, swizzled
        self.register_buffer("weight", w)
        self.register_buffer("weight_scale", swizzle_scales(sf) if swizzled else sf)
        self.register_buffer("weight_scale_2", d)
        self.register_buffer("input_global_scale", torch.tensor(1.0 / input_scale))  # encode
        self.register_buffer("alpha", torch.tensor(input_scale) * d)  # d_a * d_w
        self.bias = nn.Parameter(make_input(n, seed=seed + 1), requires_grad=False) if bias else None

    def forward(self, x):
        if self.act == "bf16":
            w = torch.ops.nvfp4.dequantize(self.weight, self.weight_scale, self.weight_scale_2, x.dtype, self.swizzled)
            return F.linear(x, w, self.bias)
        x_fp4, x_sf = torch.ops.nvfp4.quantize(x, self.input_global_scale, self.swizzled)
        y = torch.ops.nvfp4.gemm(x_fp4, self.weight, x_sf, self.weight_scale, self.alpha, x.dtype, self.swizzled)
        return y if self.bias is None else y + self.bias

    def dequantized_weight(self, dtype=torch.float32):
        sf = self.weight_scale
        if self.swizzled:
            from nvfp4_compile.formats import unswizzle_scales

            sf = unswizzle_scales(sf, self.weight.shape[0], self.weight.shape[1] * 2 // 16)
        return dequantize_nvfp4(self.weight, sf, self.weight_scale_2, dtype)

    def w4a16_reference(self, x):
        """What the Marlin rewrite computes: FP32 x @ deq(w)^T, one rounding (+ bias in FP32)."""
        y = x.float() @ self.dequantized_weight().T
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


class Block(nn.Module):
    """A decoder MLP written with the fused producers, Blackwell style:
    add_rms_norm_quant -> gemm (gate_up) -> silu_and_mul_quant -> gemm (down); returns (y, residual_out)."""

    def __init__(self, h=64, i=64, seed=10, extra_fp4_consumer=False):
        super().__init__()
        self.extra = extra_fp4_consumer
        self.eps = 1e-6
        self.register_buffer("norm_w", (1 + 0.1 * make_input(h, seed=seed, dtype=torch.float32)).to(BF16))
        for name, (n, k, s) in {"w1": (2 * i, h, seed + 1), "w2": (h, i, seed + 2)}.items():
            w, sf, d = make_weight(n, k, s)
            self.register_buffer(name, w)
            self.register_buffer(f"{name}_sf", swizzle_scales(sf))
            self.register_buffer(f"{name}_d", d)
        self.register_buffer("g1", torch.tensor(2688.0 / 4.0))  # encode scales for activations |x| <= ~4
        self.register_buffer("g2", torch.tensor(2688.0 / 1.0))

    def forward(self, x, residual):
        h_fp4, res, h_sf = torch.ops.nvfp4.add_rms_norm_quant(x, residual, self.norm_w, self.g1, self.eps)
        gu = torch.ops.nvfp4.gemm(h_fp4, self.w1, h_sf, self.w1_sf, self.w1_d / self.g1, x.dtype)
        a_fp4, a_sf = torch.ops.nvfp4.silu_and_mul_quant(gu, self.g2)
        y = torch.ops.nvfp4.gemm(a_fp4, self.w2, a_sf, self.w2_sf, self.w2_d / self.g2, x.dtype)
        if self.extra:  # the normed FP4 activation is also used directly: it must stay bit-identical
            return y, res, h_fp4, h_sf
        return y, res

    def w4a16_reference(self, x, residual):
        """The W4A16 rewrite's math: BF16 norm/activation values, FP32 GEMMs rounded once."""
        from nvfp4_compile.ops.source import add_rms_norm_value, silu_and_mul_value

        def deq(name):
            from nvfp4_compile.formats import unswizzle_scales

            w = getattr(self, name)
            sf = unswizzle_scales(getattr(self, f"{name}_sf"), w.shape[0], w.shape[1] * 2 // 16)
            return dequantize_nvfp4(w, sf, getattr(self, f"{name}_d"), torch.float32)

        normed, res = add_rms_norm_value(x, residual, self.norm_w, self.eps)
        gu = (normed.float() @ deq("w1").T).to(x.dtype)
        y = (silu_and_mul_value(gu).float() @ deq("w2").T).to(x.dtype)
        return y, res


class MoE(nn.Module):
    """Router (plain linear) + top-k + nvfp4::fused_moe on stacked FP4 experts."""

    def __init__(self, h=64, i=32, e=4, top_k=2, seed=20, w4a4=False, activation="silu"):
        super().__init__()
        self.top_k, self.activation = top_k, activation
        rows = 2 * i if activation == "silu" else i
        gen = torch.Generator().manual_seed(seed)
        self.router = nn.Parameter((torch.randn(e, h, generator=gen) * 0.1).to(BF16), requires_grad=False)
        for name, (n, k) in {"w13": (rows, h), "w2": (h, i)}.items():
            ws = [make_weight(n, k, seed + 1 + 10 * j + (name == "w2")) for j in range(e)]
            self.register_buffer(name, torch.stack([w[0] for w in ws]))
            self.register_buffer(f"{name}_sf", torch.stack([w[1] for w in ws]))
            self.register_buffer(f"{name}_gs", torch.stack([w[2] for w in ws]))
        self.a13 = nn.Parameter(torch.tensor(0.01), requires_grad=False) if w4a4 else None
        self.a2 = nn.Parameter(torch.tensor(0.01), requires_grad=False) if w4a4 else None

    def forward(self, x):
        logits = F.linear(x, self.router).float()
        w, ids = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        return torch.ops.nvfp4.fused_moe(x, ids, w, self.w13, self.w13_sf, self.w13_gs, self.w2, self.w2_sf,
                                         self.w2_gs, self.a13, self.a2, self.activation)

    def w4a16_reference(self, x):
        logits = F.linear(x, self.router).float()
        w, ids = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        return torch.ops.nvfp4.fused_moe(x, ids, w, self.w13, self.w13_sf, self.w13_gs, self.w2, self.w2_sf,
                                         self.w2_gs, None, None, self.activation)


# ----------------------------------------------------------------------------------------------------
# Graph capture and pass running
# ----------------------------------------------------------------------------------------------------


def capture(model, *inputs, dynamic=False):
    """(Dynamo graph, example inputs) of model(*inputs), captured under no_grad with a recording backend."""
    got = []

    def record(gm, example_inputs):
        got.append((gm, list(example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=record, fullgraph=True, dynamic=dynamic)(*inputs)
    assert len(got) == 1, f"expected one graph, got {len(got)}"
    gm, example_inputs = got[0]
    PassContext(example_inputs).bind(gm)  # tags parameter/buffer inputs "weight" in listings
    return gm, example_inputs


def run_passes(gm, example_inputs, passes, **ctx_kwargs):
    """Run passes on a copy of gm; returns (rewritten graph, context with the report)."""
    work = clone_graph_module(gm)
    ctx = PassContext(example_inputs=list(example_inputs), **ctx_kwargs)
    PassManager(passes).run(work, ctx)
    return work, ctx


def listing(gm) -> str:
    return graph_listing(gm)


def count_ops(gm, name: str) -> int:
    """Call nodes whose readable target ('nvfp4.marlin_gemm', 'aten.linear', 'rms_norm_value') contains name."""
    return sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method") and name in short_target(n))


def count_repacks(monkeypatch) -> list:
    """Patch the CPU kernel of nvfp4::marlin_repack to record the shape of every weight it repacks."""
    import nvfp4_compile.ops.marlin as marlin_ops

    calls = []
    original = marlin_ops.marlin_repack_reference

    def counting(*args):
        calls.append(tuple(args[0].shape))
        return original(*args)

    monkeypatch.setattr(marlin_ops, "marlin_repack_reference", counting)
    return calls
