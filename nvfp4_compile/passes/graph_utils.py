"""FX helpers the passes share: node matching on nvfp4 OpOverloads, schema-bound arguments, fake-tensor meta
for inserted nodes, graph cloning, readable names and a compact, version-stable graph listing."""
from __future__ import annotations

import operator
import re
from typing import Any, Callable

import torch
import torch.fx as fx

# c10::ScalarType codes that schema defaults use (e.g. dequantize's dtype=15).
_SCALAR_TYPE_CODES = {5: torch.float16, 6: torch.float32, 15: torch.bfloat16}


def nvfp4_op(name: str) -> torch._ops.OpOverloadPacket:
    return getattr(torch.ops.nvfp4, name)


def packet_of(target: Any):
    """The OpOverloadPacket of an OpOverload (Dynamo records either form), else the target itself."""
    return target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target


def is_call(node: Any, *targets: Any) -> bool:
    """node is a call_function of one of targets (OpOverloads compared by packet)."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    t = packet_of(node.target)
    return any(t is packet_of(x) for x in targets)


def is_op(node: Any, *names: str) -> bool:
    """node calls torch.ops.nvfp4.<name> (any overload) for one of names."""
    return is_call(node, *map(nvfp4_op, names))


def is_method(node: Any, *names: str) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_method" and node.target in names


def op_args(node: fx.Node) -> dict[str, Any]:
    """Arguments of an OpOverload(Packet) call bound to their schema names, defaults filled in."""
    target = node.target
    overload = target if isinstance(target, torch._ops.OpOverload) else target.default
    bound = {}
    for i, arg in enumerate(overload._schema.arguments):
        if i < len(node.args):
            value = node.args[i]
        elif arg.name in node.kwargs:
            value = node.kwargs[arg.name]
        elif arg.has_default_value():
            value = arg.default_value
            if isinstance(value, int) and "ScalarType" in str(arg.type):
                value = _SCALAR_TYPE_CODES.get(value, value)
        else:
            raise ValueError(f"{node.name}: missing argument {arg.name!r} of {overload}")
        bound[arg.name] = value
    return bound


def getitem_source(node: Any) -> tuple[fx.Node, int] | None:
    """(producer, index) when node is `producer[index]`."""
    if is_call(node, operator.getitem) and isinstance(node.args[0], fx.Node):
        return node.args[0], node.args[1]
    return None


def output_items(node: fx.Node) -> dict[int, fx.Node]:
    """index -> the getitem node reading that output of a multi-output node."""
    return {u.args[1]: u for u in node.users if is_call(u, operator.getitem)}


def val(node: Any):
    """The fake (or real) value Dynamo recorded for a node; None when unknown."""
    if not isinstance(node, fx.Node):
        return node
    return node.meta.get("example_value", node.meta.get("val"))


def dtype_name(dtype: torch.dtype) -> str:
    return {
        torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.uint8: "u8",
        torch.float8_e4m3fn: "e4m3", torch.int64: "i64", torch.int32: "i32",
    }.get(dtype, str(dtype).replace("torch.", ""))


def describe(value: Any) -> str:
    """'bf16[4, 64]' for a tensor (symbolic sizes print as their expressions)."""
    if isinstance(value, fx.Node):
        value = val(value)
    if isinstance(value, torch.Tensor):
        return f"{dtype_name(value.dtype)}[{', '.join(str(s) for s in value.shape)}]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    return str(value)


def fake_mode_of(gm: fx.GraphModule):
    """The FakeTensorMode of the graph's recorded values (cached on the graph: passes ask per inserted node)."""
    cached = getattr(gm.graph, "_nvfp4_fake_mode", False)
    if cached is not False:
        return cached
    mode = None
    for node in gm.graph.nodes:
        v = val(node)
        if isinstance(v, torch._subclasses.FakeTensor):
            mode = v.fake_mode
            break
    gm.graph._nvfp4_fake_mode = mode
    return mode


def _meta_value(graph_module: fx.GraphModule, target: Callable, args: tuple, kwargs: dict):
    fake_mode = fake_mode_of(graph_module)
    if fake_mode is None:
        return None
    missing = []

    def meta_of(n: fx.Node):
        v = val(n)
        if v is None:
            missing.append(n)
        return v

    fx_args, fx_kwargs = fx.node.map_arg((args, kwargs), meta_of)
    if missing:
        return None
    with fake_mode:
        return target(*fx_args, **fx_kwargs)


def insert_call(gm: fx.GraphModule, target: Callable, args: tuple, kwargs: dict | None = None,
                *, name: str | None = None) -> fx.Node:
    """Insert call_function(target) at the graph's current insert point, with fake meta so later passes can
    read its shape and dtype (the inserted targets are pure, so running them on fake tensors is safe)."""
    kwargs = kwargs or {}
    if name is None and isinstance(target, torch._ops.OpOverload):
        name = target.overloadpacket.__name__  # "marlin_gemm", not FX's "marlin_gemm_default"
    node = gm.graph.create_node("call_function", target, args, kwargs, name=name)
    meta = _meta_value(gm, target, args, kwargs)
    if meta is not None:
        node.meta["example_value"] = meta
    return node


def clone_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy the passes may mutate. Dynamo reads its own graph's placeholders after the backend returns, so
    the backend never edits the graph it was given. Keeps the metadata AOTAutograd reads from Dynamo graphs."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, env)
    graph.output(out)
    graph._codegen = gm.graph._codegen
    for old, new in env.items():
        if old.op == "placeholder" and hasattr(old, "_dynamo_source"):
            new._dynamo_source = old._dynamo_source
    copy = fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    copy.meta = dict(getattr(gm, "meta", {}))
    if hasattr(gm, "_param_name_to_source"):
        copy._param_name_to_source = gm._param_name_to_source
    return copy


_SOURCE_KEY = re.compile(r"\['([^']*)'\]|\.([A-Za-z_][A-Za-z0-9_]*)")


def source_name(node: fx.Node) -> str:
    """A readable origin for a placeholder: Dynamo's source "L['self']._modules['q_proj']._parameters['weight']"
    becomes "q_proj.weight"; other nodes give their own name."""
    grapharg = node.meta.get("grapharg") if node.op == "placeholder" else None
    source = getattr(grapharg, "source", None)
    if source is None:
        if node.op == "get_attr":
            return node.target
        return _name_from_placeholder(node.name)
    text = source.name() if callable(source.name) else str(source.name)
    parts = []
    for key, attr in _SOURCE_KEY.findall(text):
        piece = key or attr
        if attr in ("_modules", "_parameters", "_buffers") or piece in ("self", "L", "G"):
            continue
        parts.append(piece)
    return ".".join(parts) or node.name


def _name_from_placeholder(name: str) -> str:
    """Dynamo placeholder names spell the source with underscores, e.g.
    l_self_modules_layers_modules_0_modules_q_proj_parameters_weight_ -> layers.0.q_proj.weight."""
    m = re.match(r"^[lg]_(self_)?(.*?)_?$", name, re.IGNORECASE)
    body = m.group(2) if m else name
    parts = [p for p in re.split(r"(?:^|_)(?:modules|parameters|buffers)_", body) if p]
    return ".".join(parts) if parts else name


def short_target(node: fx.Node) -> str:
    """Readable op name: 'nvfp4.marlin_gemm', 'aten.mm', 'linear', 'getitem', '.t'."""
    if node.op == "call_method":
        return f".{node.target}"
    target = node.target
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        packet = packet_of(target)
        return f"{packet._qualified_op_name.replace('::', '.')}"
    return getattr(target, "__name__", str(target))


def graph_listing(gm: fx.GraphModule) -> str:
    """Compact listing of a graph for golden tests and dumps: one line per node, `name = op(args)  # meta`.

    Placeholders are renamed in0, in1, ... (Dynamo's placeholder names change between torch versions);
    constants (parameters/buffers/folded) are marked. Nodes keep the names FX gave them.
    """
    names: dict[fx.Node, str] = {}
    lines = []
    n_in = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            names[node] = f"in{n_in}"
            n_in += 1
        else:
            names[node] = node.name

    def fmt(a):
        if isinstance(a, fx.Node):
            return names[a]
        if isinstance(a, (tuple, list)):
            inner = ", ".join(fmt(x) for x in a)
            return f"({inner},)" if isinstance(a, tuple) and len(a) == 1 else (
                f"({inner})" if isinstance(a, tuple) else f"[{inner}]")
        if isinstance(a, torch.dtype):
            return dtype_name(a)
        if isinstance(a, (float, str)):
            return repr(a)
        return str(a)

    for node in gm.graph.nodes:
        v = val(node)
        meta = f"  # {describe(v)}" if isinstance(v, torch.Tensor) else ""
        if node.op == "placeholder":
            kind = node.meta.get("nvfp4_kind", "")
            lines.append(f"{names[node]}: {kind + ' ' if kind else ''}{describe(v)}".rstrip())
        elif node.op == "output":
            lines.append(f"return {fmt(node.args[0])}")
        elif node.op == "get_attr":
            lines.append(f"{names[node]} = get_attr {node.target}{meta}")
        else:
            args = [fmt(a) for a in node.args] + [f"{k}={fmt(x)}" for k, x in node.kwargs.items()]
            if node.op == "call_method":
                lines.append(f"{names[node]} = {args[0]}.{node.target}({', '.join(args[1:])}){meta}")
            else:
                lines.append(f"{names[node]} = {short_target(node)}({', '.join(args)}){meta}")
    return "\n".join(lines)


def op_name(node: fx.Node) -> str:
    """Bare op name: 'marlin_gemm', 'index_copy_', 'setitem', 't' (short_target without its namespace)."""
    return short_target(node).split(".")[-1]


def writes_first_arg(node: fx.Node) -> bool:
    """node writes its first argument in place: setitem, x.add_(...), an in-place aten op, inplace=True."""
    if node.op not in ("call_function", "call_method") or not node.args:
        return False
    name = op_name(node)
    if name == "setitem" or node.kwargs.get("inplace") is True:
        return True
    if isinstance(node.target, torch._ops.OpOverload):
        arg0 = node.target._schema.arguments[0] if node.target._schema.arguments else None
        return bool(arg0 is not None and arg0.alias_info is not None and arg0.alias_info.is_write)
    return name.endswith("_") and not name.endswith("__")


def remove_dead_code(gm: fx.GraphModule) -> None:
    """Erase computed nodes nothing uses. Unlike fx.Graph.eliminate_dead_code it keeps every node that writes
    a tensor in place (x.index_copy_(...), setitem): FX counts call_method as pure, and a KV-cache update
    has no users."""
    for node in reversed(list(gm.graph.nodes)):
        if node.op in ("call_function", "call_method", "call_module", "get_attr") and not node.users \
                and not node.is_impure() and not writes_first_arg(node):
            gm.graph.erase_node(node)
