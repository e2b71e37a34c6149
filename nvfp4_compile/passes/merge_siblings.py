"""merge_siblings: marlin_gemm nodes that read the same activation (q/k/v, gate/up) -> one marlin_gemm over
their weights concatenated along N, sliced back per projection.

At decode sizes (small M) each GEMM streams its weight once and pays the kernel's fixed cost (launch,
pipeline fill, split-K fix-up); one GEMM over N = N_q + N_k + N_v streams the same bytes and pays it once.
The FP4 sources and block scales are concatenated *before* the repack, so any N works (padding to 64
happens once, at the end); the projections' global scales become one per output column (marlin_gemm takes
global_scale [size_n]); biases are concatenated (zeros for a projection without one). All of that is
weight-only: fold_constants computes it once. The per-projection outputs are slices (views) of the result,
and each column is computed exactly as the unmerged GEMM computes it (same products, same epilogue).

Siblings: the same x node (never written in place: it must hold one value for all of them), size_k and gemm
choice; weights from marlin_repack of weight-only 2-D tensors; weight-only global scales (one value each)
and biases.
"""
from __future__ import annotations

import operator
from collections import defaultdict

import torch
import torch.fx as fx

from .graph_utils import (
    describe, getitem_source, insert_call, is_op, nvfp4_op, op_args, remove_dead_code, source_name, val,
)
from .linear import mark_target
from .manager import PassContext


def per_column_scales(scales: list[torch.Tensor], widths: list[int]) -> torch.Tensor:
    """[sum(widths)] FP32: each projection's one global scale repeated over its output columns."""
    return torch.cat([s.float().reshape(1).expand(w) for s, w in zip(scales, widths)])


def concat_biases(biases: list, widths: list[int], dtype: torch.dtype) -> torch.Tensor:
    """[sum(widths)]: the biases end to end, zeros for a projection without one."""
    device = next(b.device for b in biases if b is not None)
    return torch.cat([b.to(dtype) if b is not None else torch.zeros(w, dtype=dtype, device=device)
                      for b, w in zip(biases, widths)])


class _Gemm:
    """One mergeable marlin_gemm: its node and weight-side inputs."""

    def __init__(self, node: fx.Node, repack: fx.Node, args: dict):
        self.node, self.repack = node, repack
        self.w_fp4, self.w_sf = repack.args
        self.global_scale, self.bias, self.n = args["global_scale"], args["bias"], int(args["size_n"])


class MergeSiblings:
    name = "merge_siblings"

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        groups: dict[tuple, list[_Gemm]] = defaultdict(list)
        for node in gm.graph.nodes:
            found = self._mergeable(node, ctx)
            if found is not None:
                key, gemm = found
                if all(g.repack is not gemm.repack for g in groups[key]):  # one weight used twice: keep one
                    groups[key].append(gemm)
        for group in groups.values():
            if len(group) > 1:
                self._merge(gm, ctx, group)
        remove_dead_code(gm)

    @staticmethod
    def _mergeable(node: fx.Node, ctx: PassContext):
        if not is_op(node, "marlin_gemm"):
            return None
        a = op_args(node)
        q, s = getitem_source(a["qweight"]), getitem_source(a["scales"])
        if q is None or s is None or q[0] is not s[0] or (q[1], s[1]) != (0, 1) or not is_op(q[0], "marlin_repack"):
            return None
        repack = q[0]
        w_fp4, w_sf = repack.args
        gs, bias = a["global_scale"], a["bias"]
        if ctx.is_written_in_place(a["x"]):
            return None  # one node, but not one value: a sibling may read it after an in-place write
        if val(w_fp4) is None or val(w_fp4).dim() != 2 or val(gs) is None or val(gs).numel() != 1:
            return None
        if not all(ctx.is_constant(t) for t in (w_fp4, w_sf, gs, bias)):
            return None
        return (a["x"], int(a["size_k"]), a["gemm"]), _Gemm(node, repack, a)

    def _merge(self, gm: fx.GraphModule, ctx: PassContext, group: list[_Gemm]) -> None:
        first = group[0].node  # graph order: the merged GEMM goes where the first sibling was
        x, size_k, gemm = op_args(first)["x"], int(op_args(first)["size_k"]), op_args(first)["gemm"]
        weight_side = [t for g in group for t in (g.w_fp4, g.w_sf, g.global_scale, g.bias) if isinstance(t, fx.Node)]
        _hoist_before(gm, weight_side, first)
        widths = [g.n for g in group]
        n_total = sum(widths)
        with gm.graph.inserting_before(first):
            w_fp4 = insert_call(gm, torch.ops.aten.cat.default, ([g.w_fp4 for g in group], 0))
            w_sf = insert_call(gm, torch.ops.aten.cat.default, ([g.w_sf for g in group], 0))
            gs = insert_call(gm, per_column_scales, ([g.global_scale for g in group], widths))
            bias = None
            if any(g.bias is not None for g in group):
                bias = insert_call(gm, concat_biases, ([g.bias for g in group], widths, val(x).dtype))
            repacked = insert_call(gm, nvfp4_op("marlin_repack").default, (w_fp4, w_sf))
            qw = insert_call(gm, operator.getitem, (repacked, 0))
            sc = insert_call(gm, operator.getitem, (repacked, 1))
            merged = mark_target(insert_call(gm, nvfp4_op("marlin_gemm").default,
                                             (x, qw, sc, gs, bias, n_total, size_k, gemm)), first)
            last_dim, start, parts = val(merged).dim() - 1, 0, []
            for g in group:
                parts.append(insert_call(gm, torch.ops.aten.slice.Tensor, (merged, last_dim, start, start + g.n)))
                start += g.n
        for g, part in zip(group, parts):  # erased only now: the inserts above go before `first`
            g.node.replace_all_uses_with(part)
            gm.graph.erase_node(g.node)
        ctx.report.rewrite(
            self.name, "merge_siblings", merged.name, " + ".join(source_name(g.w_fp4) for g in group),
            f"x {describe(x)} @ w[{' + '.join(map(str, widths))} = {n_total}, {size_k}]^T, sliced back",
            "nvfp4.marlin_gemm (merged)",
        )


def _hoist_before(gm: fx.GraphModule, nodes: list[fx.Node], anchor: fx.Node) -> None:
    """Move weight-only nodes defined after anchor (and their inputs) to just before it. Safe because they
    depend only on parameters/buffers, which are placeholders at the top of the graph."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    limit = order[anchor]
    moved: set[fx.Node] = set()
    stack = [(n, False) for n in reversed(nodes)]
    while stack:
        n, inputs_done = stack.pop()
        if n in moved or order[n] < limit:
            continue
        if not inputs_done:
            stack.append((n, True))
            stack.extend((i, False) for i in reversed(n.all_input_nodes))
            continue
        anchor.prepend(n)
        moved.add(n)
