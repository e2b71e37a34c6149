"""The pass manager: runs the rewrite passes in order on one Dynamo graph, dumps the graph after each, and
holds the context the passes share (example inputs, which inputs are weights, the report).

Order: linear -> strip_fused_quant -> merge_siblings (optional) -> moe -> fold_constants. A pass is any
object with a `name` and `__call__(gm, ctx)` that edits gm.graph in place and records what it did in
ctx.report.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.fx as fx

from .graph_utils import graph_listing, op_name, val, writes_first_arg
from .report import GraphReport


class Pass(Protocol):
    name: str

    def __call__(self, gm: fx.GraphModule, ctx: "PassContext") -> None: ...


def is_weight_tensor(t: Any) -> bool:
    """A parameter or buffer of the compiled module. Dynamo (torch >= 2.5, inlined nn modules) passes those
    as graph inputs whose example is the real tensor, and marks every one of them as a static input
    (`_dynamo_static_input_type`); nn.Parameter also covers parameters of modules it did not inline."""
    return isinstance(t, torch.Tensor) and (
        isinstance(t, torch.nn.Parameter) or getattr(t, "_dynamo_static_input_type", None) is not None
    )


@dataclass
class PassContext:
    example_inputs: list
    report: GraphReport = field(default_factory=GraphReport)
    gemm: str = "auto"  # marlin_gemm's gemm argument (auto/marlin/dequant) or "bf16" (weights dequantized once)
    # Filled by fold_constants: the compile-time constants the compiled graph takes as extra inputs.
    folded: list = field(default_factory=list)
    _constant: dict = field(default_factory=dict, repr=False)
    _inputs: dict = field(default_factory=dict, repr=False)
    _mutated: set = field(default_factory=set, repr=False)

    def bind(self, gm: fx.GraphModule) -> None:
        """Pair each placeholder with its example input."""
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.example_inputs):
            raise ValueError(
                f"nvfp4_marlin: graph has {len(placeholders)} inputs but {len(self.example_inputs)} example inputs"
            )
        self._inputs = dict(zip(placeholders, self.example_inputs))
        self._constant = {}
        self._mutated = written_in_place(gm.graph)
        for node, example in self._inputs.items():
            if is_weight_tensor(example):
                node.meta["nvfp4_kind"] = "weight"

    def example(self, node: fx.Node):
        """The real example value of a placeholder (None for other nodes)."""
        return self._inputs.get(node)

    def is_written_in_place(self, node: fx.Node) -> bool:
        """The graph writes node's tensor in place somewhere (its value differs between its uses)."""
        return node in self._mutated

    def is_constant(self, node: Any) -> bool:
        """True when node's value depends only on parameters/buffers (and literals): a weight-only value
        that fold_constants can compute once."""
        if not isinstance(node, fx.Node):
            return True
        # An explicit stack, not recursion: the activation chain of a whole model is thousands of nodes deep,
        # past Python's recursion limit.
        stack = [node]
        while stack:
            n = stack[-1]
            if n in self._constant:
                stack.pop()
                continue
            result = self._constant_from_inputs(n)
            if isinstance(result, fx.Node):
                stack.append(result)  # decide that input first, then n again
                continue
            self._constant[n] = result
            stack.pop()
        return self._constant[node]

    def _constant_from_inputs(self, n: fx.Node) -> bool | fx.Node:
        """is_constant(n) from its inputs' memoized answers (in order, stopping at the first False), or the
        first input not decided yet."""
        if n in self._mutated:
            return False  # written in place later in the graph: its value is not what the node computed
        if n.op == "placeholder":
            return is_weight_tensor(self._inputs.get(n))
        if n.op == "get_attr":
            return True
        if n.op not in ("call_function", "call_method") or _has_side_effects(n):
            return False
        for a in n.all_input_nodes:
            known = self._constant.get(a)
            if known is None:
                return a
            if not known:
                return False
        return True


# Ops whose result may share memory with their first argument: writing the result in place writes it too.
_MAY_ALIAS = frozenset((
    "getitem", "__getitem__", "view", "view_as", "_unsafe_view", "reshape", "permute", "transpose", "swapaxes",
    "t", "T", "mT", "expand", "expand_as", "narrow", "select", "slice", "unsqueeze", "squeeze", "flatten",
    "unflatten", "as_strided", "diagonal", "unbind", "split", "chunk", "movedim", "unfold", "contiguous",
    "detach", "alias", "to", "type", "type_as", "float", "half", "bfloat16",
))


def written_in_place(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose tensor the graph writes in place, directly or through views of it (Dynamo graphs are not
    functionalized). Their values change after they are computed, so none of them is ever folded."""
    out: set[fx.Node] = set()
    for node in graph.nodes:
        if not writes_first_arg(node):
            continue
        target = node.args[0]
        while isinstance(target, fx.Node) and target not in out:
            out.add(target)
            target = target.args[0] if op_name(target) in _MAY_ALIAS and target.args else None
    return out


_RANDOM = ("rand", "normal", "bernoulli", "dropout", "multinomial", "poisson", "uniform", "exponential")


def _has_side_effects(node: fx.Node) -> bool:
    """Mutating, random or otherwise impure: never evaluated at compile time."""
    target = node.target
    if any(r in op_name(node) for r in _RANDOM) or writes_first_arg(node):
        return True
    if node.op == "call_method":
        return False
    if isinstance(target, torch._ops.OpOverload):
        if target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags:
            return True
    return node.is_impure()


class GraphDump:
    """One folder per compiled graph under dump_dir: NN_<stage>.py (readable FX code) and the report."""

    def __init__(self, dump_dir: str, graph_name: str):
        base = os.path.join(dump_dir, graph_name)
        path, i = base, 1
        while os.path.exists(path):
            path, i = f"{base}-{i}", i + 1
        os.makedirs(path)
        self.path = path
        self.stage = 0

    def write_graph(self, stage: str, gm: fx.GraphModule) -> None:
        code = gm.print_readable(print_output=False)
        name = os.path.join(self.path, f"{self.stage:02d}_{stage}.py")
        with open(name, "w") as f:
            f.write(f"# nvfp4_marlin: graph {'as captured by Dynamo' if self.stage == 0 else 'after pass ' + stage}\n")
            f.write("# compact listing:\n# " + graph_listing(gm).replace("\n", "\n# ") + "\n\n")
            f.write(code)
        self.stage += 1

    def write_report(self, report: GraphReport) -> None:
        with open(os.path.join(self.path, "report.txt"), "w") as f:
            f.write(str(report) + "\n")
        with open(os.path.join(self.path, "report.json"), "w") as f:
            json.dump(report.to_dict(), f, indent=1)


class PassManager:
    def __init__(self, passes: list[Pass], dump_dir: str | None = None):
        self.passes = list(passes)
        self.dump_dir = dump_dir

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
        ctx.bind(gm)
        dump = GraphDump(self.dump_dir, ctx.report.graph) if self.dump_dir else None
        if dump:
            dump.write_graph("input", gm)
        for p in self.passes:
            p(gm, ctx)
            gm.graph.lint()
            gm.recompile()
            if dump:
                dump.write_graph(p.name, gm)
        if dump:
            dump.write_report(ctx.report)
            ctx.report.note(f"graph dumps in {dump.path}")
        return gm


def default_passes(merge_siblings: bool = True) -> list[Pass]:
    from .fold_constants import FoldConstants
    from .linear import LinearPass
    from .merge_siblings import MergeSiblings
    from .moe import MoePass
    from .strip_fused_quant import StripFusedQuant

    merge = [MergeSiblings()] if merge_siblings else []
    return [LinearPass(), StripFusedQuant(), *merge, MoePass(), FoldConstants()]


def node_shapes(*pairs: tuple[str, Any]) -> str:
    """'x bf16[4, 64], w u8[128, 32]' from (label, node) pairs."""
    from .graph_utils import describe

    return ", ".join(f"{label} {describe(val(n) if isinstance(n, fx.Node) else n)}" for label, n in pairs)
