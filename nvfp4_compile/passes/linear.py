"""linear: NVFP4 GEMMs -> nvfp4::marlin_gemm (W4A16) with marlin_repack nodes on the weight.

Two patterns, weights must be parameters/buffers (fold_constants then repacks them once):

  W4A4   gemm(a_fp4, w_fp4, a_sf, w_sf, alpha, out_dtype, swizzled) with (a_fp4, a_sf) from
         quantize(x, g_a) -> marlin_gemm(x, repack(w), d_w = alpha * g_a). alpha = d_a * d_w and g_a = 1/d_a,
         so alpha * g_a is the weight's decode scale. The quantize node stays if its FP4 output has other
         users. When the FP4 activation comes from a fused producer (rms_norm_quant, ...), the GEMM gets a
         "bridge" dequantize of the FP4 activation at d_a = 1/g_a that strip_fused_quant then replaces with
         the producer's BF16 value; from anything else, a dequantize at scale 1 with d = alpha (exact:
         e2m1 * e4m3 products fit BF16).
  W4A16  dequantize(w_fp4, w_sf, d_w, dtype, swizzled) used as the weight of linear / mm / addmm / matmul
         (directly or through t / transpose / permute / .T) -> marlin_gemm(x, repack(w), d_w, bias).

Swizzled weight scales get an unswizzle node (formats.unswizzle_scales) before the repack. marlin_gemm gets
ctx.gemm ("auto" | "marlin" | "dequant", its tactic choice) as its last argument. With ctx.gemm == "bf16"
the weight is dequantized instead (folded once to a BF16 constant) and fed to linear.
"""
from __future__ import annotations

import builtins
import operator

import torch
import torch.fx as fx

from ..formats import BLOCK_SIZE, unswizzle_scales
from ..ops.marlin import ACTIVATION_DTYPES  # what the Marlin kernels take
from .graph_utils import (
    describe,
    getitem_source,
    insert_call,
    is_call,
    is_method,
    is_op,
    nvfp4_op,
    op_args,
    remove_dead_code,
    source_name,
    val,
)
from .manager import PassContext

# Producers of FP4 activations: op name -> output index of the block scales (x_fp4 is always output 0).
FP4_PRODUCERS = {"quantize": 1, "rms_norm_quant": 1, "add_rms_norm_quant": 2, "silu_and_mul_quant": 1,
                 "relu2_quant": 1}
FUSED_PRODUCERS = tuple(n for n in FP4_PRODUCERS if n != "quantize")

_LINEAR = (torch._C._nn.linear, torch.nn.functional.linear, torch.ops.aten.linear)
_MATMUL = (operator.matmul, torch.matmul, torch.ops.aten.matmul)
_MM = (torch.mm, torch.ops.aten.mm)
_ADDMM = (torch.addmm, torch.ops.aten.addmm)


def mark_target(node: fx.Node, origin: fx.Node | None = None) -> fx.Node:
    """Tag a node the passes produced: fold_constants folds the weight-only subgraphs feeding such nodes.
    origin: the node it replaces, whose source location the dumps then show."""
    node.meta["nvfp4_target"] = True
    if origin is not None and "stack_trace" in origin.meta:
        node.meta["stack_trace"] = origin.meta["stack_trace"]
    return node


def emit_marlin_weight(gm: fx.GraphModule, w_fp4: fx.Node, w_sf: fx.Node, swizzled: bool):
    """marlin_repack nodes for a weight (2-D or an expert stack); returns (qweight, scales) nodes."""
    if swizzled:
        *_, n, half_k = val(w_fp4).shape
        w_sf = insert_call(gm, unswizzle_scales, (w_sf, n, 2 * half_k // BLOCK_SIZE))
    repacked = insert_call(gm, nvfp4_op("marlin_repack").default, (w_fp4, w_sf))
    return insert_call(gm, operator.getitem, (repacked, 0)), insert_call(gm, operator.getitem, (repacked, 1))


def emit_gemm(gm, ctx: PassContext, x, w_fp4, w_sf, swizzled: bool, d_w, bias) -> fx.Node:
    """marlin_gemm (or, with gemm="bf16", linear on the dequantized weight) at the current insert point."""
    n, half_k = val(w_fp4).shape
    if ctx.gemm == "bf16":
        w = insert_call(gm, nvfp4_op("dequantize").default, (w_fp4, w_sf, d_w, val(x).dtype, swizzled))
        return mark_target(insert_call(gm, torch.ops.aten.linear.default, (x, w, bias)))
    q, s = emit_marlin_weight(gm, w_fp4, w_sf, swizzled)
    return mark_target(insert_call(gm, nvfp4_op("marlin_gemm").default,
                                   (x, q, s, d_w, bias, int(n), 2 * int(half_k), ctx.gemm)))


def _target_name(ctx: PassContext) -> str:
    return "aten.linear (bf16 weight)" if ctx.gemm == "bf16" else "nvfp4.marlin_gemm"


def _weight_shape(w_fp4: fx.Node) -> str:
    n, half_k = val(w_fp4).shape
    return f"w[{n}, {2 * half_k}]"


class LinearPass:
    name = "linear"

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        for node in list(gm.graph.nodes):
            if is_op(node, "gemm"):
                self._w4a4(gm, ctx, node)
            elif is_op(node, "dequantize"):
                self._w4a16(gm, ctx, node)
        remove_dead_code(gm)

    # ------------------------------------------------------------------------------------------------
    # W4A4: quantize (or a fused producer) -> gemm
    # ------------------------------------------------------------------------------------------------

    def _w4a4(self, gm, ctx: PassContext, node: fx.Node) -> None:
        a = op_args(node)
        w_fp4, w_sf, alpha = a["b_fp4"], a["b_sf"], a["alpha"]
        skip = lambda reason: ctx.report.skip(self.name, node.name, "nvfp4.gemm", reason)  # noqa: E731
        if not (ctx.is_constant(w_fp4) and ctx.is_constant(w_sf)):
            return skip("weight is not a parameter/buffer: it would be repacked on every call")
        producer, op_name = _fp4_producer(a["a_fp4"], a["a_sf"])
        if op_name is not None:
            source = op_args(producer)
            act_dtype = val(source["x"]).dtype
        else:
            act_dtype = a["out_dtype"]
        if act_dtype not in ACTIVATION_DTYPES:
            return skip(f"activations are {act_dtype}; the Marlin kernel takes bf16/fp16")
        if a["out_dtype"] != act_dtype:
            return skip(f"out_dtype {a['out_dtype']} differs from the activation dtype {act_dtype}")

        swizzled = a["swizzled"]
        with gm.graph.inserting_before(node):
            if op_name == "quantize":
                x, g = source["x"], source["global_scale"]
                d_w = insert_call(gm, torch.ops.aten.mul.Tensor, (alpha, g))
            elif op_name is not None:  # fused producer: a bridge that strip_fused_quant replaces
                g = source["global_scale"]
                d_a = insert_call(gm, torch.ops.aten.reciprocal.default, (g,))
                x = insert_call(gm, nvfp4_op("dequantize").default, (a["a_fp4"], a["a_sf"], d_a, act_dtype, swizzled))
                x.meta["nvfp4_bridge"] = producer
                d_w = insert_call(gm, torch.ops.aten.mul.Tensor, (alpha, g))
            else:  # unknown FP4 source: dequantize at scale 1 (exact), the GEMM applies alpha
                one = insert_call(gm, torch.ops.aten.scalar_tensor.default, (1.0,),
                                  {"dtype": torch.float32, "device": val(alpha).device})
                x = insert_call(gm, nvfp4_op("dequantize").default, (a["a_fp4"], a["a_sf"], one, act_dtype, swizzled))
                d_w = alpha
            new = mark_target(emit_gemm(gm, ctx, x, w_fp4, w_sf, swizzled, d_w, None), node)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        via = {None: "FP4 input, dequantized"}.get(op_name, op_name)
        ctx.report.rewrite(self.name, "linear_w4a4", new.name, source_name(w_fp4),
                           f"x {describe(x)} @ {_weight_shape(w_fp4)}^T (activation from {via})", _target_name(ctx))

    # ------------------------------------------------------------------------------------------------
    # W4A16: dequantize(weight) -> linear / mm / addmm / matmul
    # ------------------------------------------------------------------------------------------------

    def _w4a16(self, gm, ctx: PassContext, deq: fx.Node) -> None:
        a = op_args(deq)
        w_fp4, w_sf = a["x_fp4"], a["x_sf"]
        if not (ctx.is_constant(w_fp4) and ctx.is_constant(w_sf)):
            return  # dequantize of an activation or of a computed tensor: not a weight
        skip = lambda node, op, reason: ctx.report.skip(self.name, node.name, op, reason)  # noqa: E731
        if val(w_fp4).dim() != 2:
            return skip(deq, "nvfp4.dequantize", f"weight {describe(w_fp4)} is not 2-D (expert stacks go through fused_moe)")
        n, k = val(w_fp4).shape[0], 2 * val(w_fp4).shape[1]
        uses, rejected = _linear_uses(deq)
        for user, why in rejected:
            skip(user, getattr(user.target, "__name__", str(user.target)), why)
        matched = []
        for consumer, x, bias in uses:
            reason = _check_linear_use(val(x), val(bias), val(deq).dtype, n, k)
            if reason:
                skip(consumer, getattr(consumer.target, "__name__", str(consumer.target)), reason)
            else:
                matched.append((consumer, x, bias))
        if not matched:
            return
        if ctx.gemm == "bf16":  # the dequantized weight itself is the constant to fold
            for consumer, x, bias in matched:
                mark_target(consumer, consumer)
                ctx.report.rewrite(self.name, "linear_w4a16", consumer.name, source_name(w_fp4),
                                   f"x {describe(x)} @ w[{n}, {k}]^T", _target_name(ctx))
            return
        with gm.graph.inserting_before(deq):
            q, s = emit_marlin_weight(gm, w_fp4, w_sf, a["swizzled"])
        for consumer, x, bias in matched:
            with gm.graph.inserting_before(consumer):
                new = mark_target(insert_call(
                    gm, nvfp4_op("marlin_gemm").default, (x, q, s, a["global_scale"], bias, int(n), int(k), ctx.gemm)
                ), consumer)
            consumer.replace_all_uses_with(new)
            gm.graph.erase_node(consumer)
            ctx.report.rewrite(self.name, "linear_w4a16", new.name, source_name(w_fp4),
                               f"x {describe(x)} @ w[{n}, {k}]^T" + (" + bias" if bias is not None else ""),
                               _target_name(ctx))


def _fp4_producer(a_fp4, a_sf):
    """(producer node, op name) when a_fp4/a_sf are outputs 0/sf of the same known producer, else (None, None)."""
    src, src_sf = getitem_source(a_fp4), getitem_source(a_sf)
    if not src or not src_sf or src[0] is not src_sf[0] or src[1] != 0:
        return None, None
    producer = src[0]
    for name, sf_index in FP4_PRODUCERS.items():
        if is_op(producer, name) and src_sf[1] == sf_index:
            return producer, name
    return None, None


def _is_transpose(node: fx.Node, of: fx.Node) -> bool:
    """node = of.T for a 2-D `of` (t, transpose(0, 1), permute(1, 0), .T, .mT)."""
    if not node.args or node.args[0] is not of:
        return False
    rest = tuple(node.args[1:])
    if is_method(node, "t") or is_call(node, torch.t, torch.ops.aten.t):
        return True
    if is_method(node, "transpose") or is_call(node, torch.transpose, torch.ops.aten.transpose):
        return sorted(d % 2 for d in rest) == [0, 1] if len(rest) == 2 else False
    if is_method(node, "permute") or is_call(node, torch.permute, torch.ops.aten.permute):
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        return [d % 2 for d in dims] == [1, 0]
    if is_call(node, builtins.getattr):
        return rest in (("T",), ("mT",))
    return False


def _linear_uses(deq: fx.Node):
    """Split the users of a dequantized weight into linear uses (consumer, x, bias) and rejected (user, why)."""
    uses, rejected = [], []
    for user in list(deq.users):
        if is_call(user, *_LINEAR) and len(user.args) >= 2 and user.args[1] is deq and user.args[0] is not deq:
            bias = user.args[2] if len(user.args) > 2 else user.kwargs.get("bias")
            uses.append((user, user.args[0], bias))
        elif _is_transpose(user, deq):
            for consumer in list(user.users):
                use = _matmul_use(consumer, user)
                if use:
                    uses.append(use)
                else:
                    rejected.append((consumer, "uses the transposed weight in an op that is not mm/addmm/matmul"))
        else:
            rejected.append((user, "dequantized weight is used by an op that is not a linear/transpose"))
    return uses, rejected


def _matmul_use(consumer: fx.Node, wt: fx.Node):
    args = consumer.args
    if is_call(consumer, *_MATMUL, *_MM) and len(args) == 2 and args[1] is wt and not consumer.kwargs:
        return consumer, args[0], None
    if is_call(consumer, *_ADDMM) and len(args) == 3 and args[2] is wt:
        if consumer.kwargs.get("beta", 1) == 1 and consumer.kwargs.get("alpha", 1) == 1:
            return consumer, args[1], args[0]
    return None


def _check_linear_use(x, bias, w_dtype, n, k) -> str | None:
    """Why the Marlin GEMM cannot take this use, or None."""
    if not isinstance(x, torch.Tensor):
        return "activation has no recorded shape/dtype"
    if x.dtype not in ACTIVATION_DTYPES:
        return f"activations are {x.dtype}; the Marlin kernel takes bf16/fp16"
    if x.dtype != w_dtype:
        return f"activation dtype {x.dtype} differs from the dequantized weight's {w_dtype}"
    if x.dim() < 1 or x.shape[-1] != k:
        return f"activation {describe(x)} does not end in K={k}"
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,) or bias.dtype != x.dtype):
        return f"bias {describe(bias)} is not [{n}] in {x.dtype}"
    return None
