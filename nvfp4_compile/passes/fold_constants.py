"""fold_constants: evaluate, once at compile time, every weight-only subgraph that feeds the target ops the
passes produced (marlin_repack, unswizzle, d_w = alpha * g_a, dequantized BF16 weights) and hand the
results to the compiled graph as extra inputs.

A node is weight-only when everything it depends on is a parameter/buffer (ctx.is_constant). The folded
nodes are split into connected components, one FoldedConstant each (one per weight, typically), so a
recompile reuses exactly the weights it shares with earlier compiles (folded_constants.fold's cache).
The results become new trailing placeholders marked as static inputs (AOTAutograd/cudagraphs then treat
them like parameters: no copies, stable addresses), not graph attributes, so refreshing them in place is
seen by the compiled code.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .folded_constants import fold
from .graph_utils import fake_mode_of, op_name, remove_dead_code, short_target, source_name, val
from .manager import PassContext


def _weight_only_feeders(gm: fx.GraphModule, ctx: PassContext) -> list[fx.Node]:
    """Computed (call_*) weight-only nodes that (transitively) feed a pass-produced target node, in graph order."""
    found: set[fx.Node] = set()
    stack = [n for node in gm.graph.nodes if node.meta.get("nvfp4_target") for n in node.all_input_nodes]
    while stack:
        n = stack.pop()
        if n in found or n.op not in ("call_function", "call_method") or not ctx.is_constant(n):
            continue
        found.add(n)
        stack.extend(n.all_input_nodes)
    return [n for n in gm.graph.nodes if n in found]


def _components(nodes: list[fx.Node]) -> list[list[fx.Node]]:
    parent = {n: n for n in nodes}

    def root(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in nodes:
        for i in n.all_input_nodes:
            if i in parent:
                parent[root(i)] = root(n)
    groups: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:  # graph order kept inside each component
        groups.setdefault(root(n), []).append(n)
    return list(groups.values())


def _program(component: list[fx.Node], outputs: list[fx.Node]):
    """A standalone GraphModule computing outputs from the component's source nodes (placeholders/get_attrs)."""
    members = set(component)
    sources = []
    for n in component:
        for i in n.all_input_nodes:
            if i not in members and i not in sources:
                sources.append(i)
    graph = fx.Graph()
    env = {}
    for i, s in enumerate(sources):
        env[s] = graph.placeholder(f"src{i}")
    for n in component:
        env[n] = graph.node_copy(n, lambda x: env[x])
        env[n].meta = {}
    graph.output(tuple(env[o] for o in outputs))
    return fx.GraphModule(torch.nn.Module(), graph), sources


def program_key(program: fx.GraphModule) -> str:
    """The program's ops and wiring, without node names (which depend on the rest of the graph): the same
    weight-only subgraph traced from another callable or shape gets the same key, so it hits the cache."""
    index: dict[fx.Node, int] = {}
    lines = []
    for i, n in enumerate(program.graph.nodes):
        index[n] = i
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__qualname__", None) or str(n.target)
        module = "" if isinstance(n.target, str) else getattr(n.target, "__module__", "") or ""
        args = fx.map_arg((n.args, n.kwargs), lambda a: f"%{index[a]}")
        lines.append(f"{n.op} {module}.{target} {args!r}")
    return "\n".join(lines)


class FoldConstants:
    name = "fold_constants"

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        feeders = _weight_only_feeders(gm, ctx)
        if not feeders:
            return
        feeder_set = set(feeders)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        last_placeholder = placeholders[-1] if placeholders else None
        fake_mode = fake_mode_of(gm)
        for component in _components(feeders):
            outputs = [n for n in component if any(u not in feeder_set for u in n.users)]
            if not outputs or not all(isinstance(val(o), torch.Tensor) for o in outputs):
                for o in outputs:
                    ctx.report.skip(self.name, o.name, short_target(o), "weight-only value is not a tensor; not folded")
                continue
            program, sources = _program(component, outputs)
            real = [ctx.example(s) if s.op == "placeholder" else _get_attr(gm, s.target) for s in sources]
            names = [source_name(s) for s in sources]
            entry, cached = fold(program, program_key(program), real, names)
            index = len(ctx.folded)
            new_inputs = []
            for j, (out, tensor) in enumerate(zip(outputs, entry.outputs)):
                with gm.graph.inserting_after(last_placeholder) if last_placeholder else gm.graph.inserting_before(None):
                    ph = gm.graph.placeholder(f"nvfp4_folded{index}_{j}")
                last_placeholder = ph
                ph._dynamo_source = None  # not a user input: AOTAutograd's Dynamo metadata allows None
                ph.meta["tensor_dict"] = {"_dynamo_static_input_type": "unguarded"}
                ph.meta["nvfp4_kind"] = "folded"
                if fake_mode is not None:
                    ph.meta["example_value"] = fake_mode.from_tensor(tensor, static_shapes=True)
                out.replace_all_uses_with(ph)
                new_inputs.append(ph)
            accessors = [placeholders.index(s) if s.op == "placeholder" else _get_attr(gm, s.target) for s in sources]
            ctx.folded.append((entry, accessors, new_inputs))
            ops = ", ".join(dict.fromkeys(op_name(n) for n in component if n.op != "placeholder"
                                          and op_name(n) != "getitem"))
            ctx.report.folded.append(_folded_row(index, names, ops, entry, cached))
        remove_dead_code(gm)


def _folded_row(index, names, ops, entry, cached):
    from .report import Folded

    return Folded(f"nvfp4_folded{index}", ", ".join(names), ops, entry.nbytes, 0.0 if cached else entry.seconds, cached)


def _get_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
