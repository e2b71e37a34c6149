"""strip_fused_quant: fused norm/activation + FP4-quantize producers whose FP4 output feeds rewritten GEMMs
become their BF16 computation feeding the W4A16 GEMM directly.

The linear pass leaves, for every GEMM fed by a fused producer P, a "bridge" dequantize of P's FP4 output
(meta "nvfp4_bridge" = P). Here P is replaced by the BF16 value it quantizes (ops.source's *_value
functions: FP32 math rounded once to x.dtype, plain torch ops that Inductor fuses), the bridges by that
value, `residual_out` of add_rms_norm_quant by the recomputed sum. FP4 consumers that were not rewritten
get `nvfp4::quantize(value, global_scale)`, which reproduces P's FP4 output bit for bit (design.md).
"""
from __future__ import annotations

import operator

import torch.fx as fx

from ..ops.source import add_rms_norm_value, relu2_value, rms_norm_value, silu_and_mul_value
from .graph_utils import describe, insert_call, is_op, nvfp4_op, op_args, output_items, remove_dead_code
from .linear import FP4_PRODUCERS, FUSED_PRODUCERS
from .manager import PassContext


def _value_call(name: str, a: dict):
    """(python function computing the BF16 value the producer quantizes, its args)."""
    if name == "rms_norm_quant":
        return rms_norm_value, (a["x"], a["weight"], a["eps"])
    if name == "add_rms_norm_quant":
        return add_rms_norm_value, (a["x"], a["residual"], a["weight"], a["eps"])
    if name == "silu_and_mul_quant":
        return silu_and_mul_value, (a["x"],)
    if name == "relu2_quant":
        return relu2_value, (a["x"],)
    raise KeyError(name)


def _position(gm: fx.GraphModule):
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return order.__getitem__


class StripFusedQuant:
    name = "strip_fused_quant"

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        for node in list(gm.graph.nodes):
            for name in FUSED_PRODUCERS:
                if is_op(node, name):
                    self._strip(gm, ctx, node, name)
        remove_dead_code(gm)

    def _strip(self, gm, ctx: PassContext, producer: fx.Node, name: str) -> None:
        items = output_items(producer)
        fp4, sf = items.get(0), items.get(FP4_PRODUCERS[name])
        bridges = [u for u in (fp4.users if fp4 is not None else ()) if u.meta.get("nvfp4_bridge") is producer]
        if not bridges:
            ctx.report.skip(self.name, producer.name, f"nvfp4.{name}", "its FP4 output feeds no rewritten GEMM")
            return
        a = op_args(producer)
        fn, args = _value_call(name, a)
        with gm.graph.inserting_after(producer):
            computed = insert_call(gm, fn, args)
        value = computed
        if name == "add_rms_norm_quant":
            with gm.graph.inserting_after(computed):
                value = insert_call(gm, operator.getitem, (computed, 0))
            with gm.graph.inserting_after(value):
                residual = insert_call(gm, operator.getitem, (computed, 1))
            if 1 in items:
                items[1].replace_all_uses_with(residual)
        for bridge in bridges:
            bridge.replace_all_uses_with(value)
            gm.graph.erase_node(bridge)
        others = [u for item in (fp4, sf) if item is not None for u in item.users]
        if others:  # FP4 consumers that stay: quantize the BF16 value again (bit-identical to the producer)
            with gm.graph.inserting_before(min(others, key=_position(gm))):
                q = insert_call(gm, nvfp4_op("quantize").default, (value, a["global_scale"], a["swizzled"]))
                for index, item in ((0, fp4), (1, sf)):
                    if item is not None and item.users:
                        item.replace_all_uses_with(insert_call(gm, operator.getitem, (q, index)))
            ctx.report.note(f"{producer.name}: {len(others)} FP4 consumer(s) not rewritten, fed by nvfp4.quantize "
                            "of the BF16 value (bit-identical)")
        ctx.report.rewrite(self.name, "fused_quant", producer.name, "-",
                           f"x {describe(a['x'])} -> {len(bridges)} GEMM(s)", f"bf16 {fn.__name__} (Inductor)")
