"""moe: nvfp4::fused_moe -> nvfp4::marlin_moe with marlin_repack nodes on both expert stacks.

The Marlin MoE path is W4A16: activation scales (a13_gs, a2_gs) of a W4A4 fused_moe are dropped and the
activations stay in BF16; the report says so. Expert stacks must be parameters/buffers. marlin_moe gets
ctx.gemm as its tactic choice ("auto" | "marlin" | "dequant"; with gemm="bf16", which keeps dense weights as
BF16 constants, expert stacks stay FP4 and the MoE tactic is "auto").
"""
from __future__ import annotations

import torch.fx as fx

from .graph_utils import describe, insert_call, is_op, nvfp4_op, op_args, remove_dead_code, source_name, val
from .linear import ACTIVATION_DTYPES, emit_marlin_weight, mark_target
from .manager import PassContext


def moe_tactic(ctx: PassContext) -> str:
    return "auto" if ctx.gemm == "bf16" else ctx.gemm


class MoePass:
    name = "moe"

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        for node in list(gm.graph.nodes):
            if is_op(node, "fused_moe"):
                self._rewrite(gm, ctx, node)
        remove_dead_code(gm)

    def _rewrite(self, gm, ctx: PassContext, node: fx.Node) -> None:
        a = op_args(node)
        skip = lambda reason: ctx.report.skip(self.name, node.name, "nvfp4.fused_moe", reason)  # noqa: E731
        weights = ("w13", "w13_sf", "w2", "w2_sf")
        if not all(ctx.is_constant(a[w]) for w in weights):
            return skip("expert weights are not parameters/buffers: they would be repacked on every call")
        x = val(a["x"])
        if x.dtype not in ACTIVATION_DTYPES:
            return skip(f"activations are {x.dtype}; the Marlin kernel takes bf16/fp16")
        inter = 2 * val(a["w2"]).shape[-1]
        with gm.graph.inserting_before(node):
            q13, s13 = emit_marlin_weight(gm, a["w13"], a["w13_sf"], swizzled=False)
            q2, s2 = emit_marlin_weight(gm, a["w2"], a["w2_sf"], swizzled=False)
            new = mark_target(insert_call(gm, nvfp4_op("marlin_moe").default, (
                a["x"], a["topk_ids"], a["topk_weights"], q13, s13, a["w13_gs"], q2, s2, a["w2_gs"],
                a["activation"], int(inter), moe_tactic(ctx),
            )), node)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        w4a4 = a["a13_gs"] is not None
        e = val(a["w13"]).shape[0]
        ctx.report.rewrite(
            self.name, "moe", new.name, source_name(a["w13"]),
            f"x {describe(x)}, {e} experts, I={inter}, {a['activation']}" + (" (W4A4 scales dropped: W4A16)" if w4a4 else ""),
            "nvfp4.marlin_moe",
        )
