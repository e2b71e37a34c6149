"""The `nvfp4_marlin` torch.compile backend: registration, options, pass manager, Inductor hand-off, runtime.

    torch.compile(model, backend="nvfp4_marlin")                                   # via the entry point
    torch.compile(model, backend="nvfp4_marlin", mode="reduce-overhead")
    torch.compile(model, backend="nvfp4_marlin", options={"dump_dir": "dumps", "max_autotune": True})
    torch.compile(model, backend=nvfp4_compile.backend_with(mode="reduce-overhead", dump_dir="dumps"))

torch.compile passes `mode` and `options` on to a string backend as keyword arguments, but (as for
Inductor) refuses both at once; put the mode into options ({"mode": ...}) or use backend_with() then.
Options (docs/backend.md): dump_dir (or env NVFP4_COMPILE_DUMP_DIR), target, release_source_weights,
gemm, merge_siblings, mode; every other key is an Inductor config option, passed through.
"""
from __future__ import annotations

import itertools
import logging
import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch
import torch.fx as fx

from . import ops  # noqa: F401  (registers torch.ops.nvfp4.*)
from .passes.folded_constants import FoldedInputs, ReleasedWeight, release
from .passes.graph_utils import clone_graph_module, packet_of
from .passes.manager import PassContext, PassManager, default_passes, is_weight_tensor
from .passes.report import GraphReport

NAME = "nvfp4_marlin"
TARGETS = ("auto", "sm90", "cpu", "force")
GEMMS = ("auto", "marlin", "dequant", "bf16")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
log = logging.getLogger("nvfp4_compile")
_graph_counter = itertools.count()


@dataclass
class BackendOptions:
    dump_dir: str | None = None  # write each graph before/after every pass + the report here
    target: str = "auto"  # "auto" | "sm90" | "cpu" | "force", see decide_rewrite
    release_source_weights: bool = False  # free the FP4 source weights once repacked
    # GEMM of each rewritten linear: "auto" (per shape, the fastest of the marlin_gemm tactics, profiled on first
    # use: docs/tactics.md), "marlin" (the W4A16 kernel), "dequant" (FP4 weight dequantized per call + cuBLAS),
    # "bf16" (weights dequantized once at compile time and kept as BF16 constants, dense BF16 GEMM)
    gemm: str = "auto"
    # One GEMM for the linears that read the same activation (q/k/v, gate/up): passes/merge_siblings.py
    merge_siblings: bool = True
    mode: str | None = None  # torch.compile mode, mapped to Inductor config as torch.compile does
    inductor: dict = field(default_factory=dict)  # pass-through Inductor config patches

    @classmethod
    def parse(cls, mode: str | None = None, options: dict | None = None) -> "BackendOptions":
        options = dict(options or {})
        ours = {f.name for f in fields(cls)} - {"inductor"}
        kwargs = {k: options.pop(k) for k in list(options) if k in ours}
        if mode is not None:
            if kwargs.get("mode") not in (None, mode):
                raise ValueError(f"nvfp4_marlin: mode={mode!r} conflicts with options['mode']={kwargs['mode']!r}")
            kwargs["mode"] = mode
        kwargs.setdefault("dump_dir", os.environ.get("NVFP4_COMPILE_DUMP_DIR") or None)
        opts = cls(**kwargs, inductor=_inductor_options(options))
        if opts.target not in TARGETS:
            raise ValueError(f"nvfp4_marlin: target must be one of {TARGETS}, got {opts.target!r}")
        if opts.gemm not in GEMMS:
            raise ValueError(f"nvfp4_marlin: gemm must be one of {GEMMS}, got {opts.gemm!r}")
        if opts.mode is not None and opts.mode not in MODES:
            raise ValueError(f"nvfp4_marlin: mode must be one of {MODES}, got {opts.mode!r}")
        return opts

    def inductor_config(self) -> dict:
        from torch._inductor import list_mode_options

        config = dict(list_mode_options(self.mode)) if self.mode else {}
        config.update(self.inductor)
        return config


def _inductor_options(options: dict) -> dict:
    """Validate pass-through keys against Inductor's config (as torch.compile does for backend="inductor")."""
    from torch._inductor import config

    known = config.get_config_copy()
    out = {}
    for key, value in options.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(
                f"nvfp4_marlin: unknown option {key!r}: not one of the backend's options "
                f"({', '.join(f.name for f in fields(BackendOptions) if f.name != 'inductor')}) "
                "nor an Inductor config option (torch._inductor.list_options())"
            )
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------------------
# Where to rewrite
# ----------------------------------------------------------------------------------------------------


def graph_device(example_inputs) -> torch.device:
    for t in example_inputs:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def decide_rewrite(target: str, device: torch.device) -> tuple[bool, str]:
    """(rewrite?, why). auto: CPU and CUDA SM80-SM9x rewrite; SM100+ has FP4 tensor cores, so the native
    NVFP4 ops stay. force: rewrite anywhere. sm90 / cpu: rewrite, and check the graph runs there."""
    if target == "cpu" and device.type != "cpu":
        raise ValueError(f"nvfp4_marlin: target='cpu' but the graph runs on {device}")
    if target == "sm90" and device.type != "cuda":
        raise ValueError(f"nvfp4_marlin: target='sm90' but the graph runs on {device}")
    if device.type == "cuda":
        major, minor = _capability(device)
        arch = f"sm{major}{minor}"
        if target in ("force", "sm90"):
            return True, f"rewrite to Marlin W4A16 ({arch}, target={target!r})"
        if major >= 10:
            return False, f"left native NVFP4 ops alone: {arch} has FP4 tensor cores (target='force' rewrites anyway)"
        if major < 8:
            return False, f"left alone: Marlin kernels need sm80+, this GPU is {arch}"
        return True, f"rewrite to Marlin W4A16 ({arch})"
    if device.type == "cpu":
        return True, f"rewrite to Marlin W4A16 (cpu reference kernels, target={target!r})"
    if target == "force":
        return True, f"rewrite to Marlin W4A16 ({device.type}, forced)"
    return False, f"left alone: no Marlin kernels for device {device.type}"


def _training_reason(example_inputs) -> str | None:
    if not torch.is_grad_enabled():
        return None
    for t in example_inputs:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            return ("graph left untouched: grad mode is on and an input requires grad (training). The Marlin ops "
                    "have no backward; run inference under torch.no_grad() or torch.inference_mode()")
    return None


def _calls_nvfp4_ops(gm: fx.GraphModule) -> bool:
    return any(
        n.op == "call_function" and getattr(packet_of(n.target), "_qualified_op_name", "").startswith("nvfp4::")
        for n in gm.graph.nodes
    )


# ----------------------------------------------------------------------------------------------------
# The compiled graph at run time
# ----------------------------------------------------------------------------------------------------


class CompiledGraph:
    """Inductor's compiled function plus the folded weights: refresh stale weights, drop the inputs the graph
    no longer reads (the FP4 sources of folded weights), append the folded constants."""

    def __init__(self, inner: Callable, keep: list[int], folded: FoldedInputs):
        self.inner = inner
        self.keep = keep
        self.folded = folded
        self.extra = folded.tensors()  # same tensor objects forever: refresh copies into them

    def __call__(self, *args):
        self.folded.refresh(args)
        return self.inner(*[args[i] for i in self.keep], *self.extra)


# ----------------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------------


def _graph_name(gm: fx.GraphModule) -> str:
    compile_id = getattr(gm, "meta", {}).get("dynamo_compile_id")
    if compile_id is not None:
        return "graph_" + str(compile_id).replace("/", "_").replace(" ", "")
    return f"graph_{next(_graph_counter)}"


def compile_graph(gm: fx.GraphModule, example_inputs: list, options: BackendOptions,
                  on_report: Callable[[GraphReport], None] | None = None):
    from torch._inductor.compile_fx import compile_fx

    report = GraphReport(graph=_graph_name(gm))
    device = graph_device(example_inputs)
    report.device = str(device)
    training = _training_reason(example_inputs)
    rewrite, why = (False, training) if training else decide_rewrite(options.target, device)
    report.decision = why
    if training and _calls_nvfp4_ops(gm):
        # Only the explain report would say it otherwise, and the user gets the slow reference ops.
        warnings.warn(f"nvfp4_marlin: {training}", stacklevel=2)
    config = options.inductor_config()
    if not rewrite:
        _publish(report, on_report)
        return compile_fx(gm, example_inputs, config_patches=config)

    work = clone_graph_module(gm)
    ctx = PassContext(example_inputs=list(example_inputs), report=report, gemm=options.gemm)
    PassManager(default_passes(options.merge_siblings), options.dump_dir).run(work, ctx)

    # Inputs the rewritten graph no longer reads (FP4 sources of folded weights) are not passed on.
    placeholders = [n for n in work.graph.nodes if n.op == "placeholder"]
    n_orig = len(example_inputs)
    keep = [i for i, n in enumerate(placeholders[:n_orig]) if n.users or not is_weight_tensor(example_inputs[i])]
    for i, n in enumerate(placeholders[:n_orig]):
        if i not in keep:
            work.graph.erase_node(n)
    work.recompile()
    folded = FoldedInputs(ctx.folded)
    inputs = [example_inputs[i] for i in keep] + folded.tensors()
    inner = compile_fx(work, inputs, config_patches=config)
    if options.release_source_weights:
        _release_sources(ctx, example_inputs, keep, report)
    _publish(report, on_report)
    return CompiledGraph(inner, keep, folded)


def _release_sources(ctx: PassContext, example_inputs, keep, report: GraphReport) -> None:
    """Free FP4 weights/scales that only feed folded constants (the compiled graph no longer reads them)."""
    freed = 0
    for entry, accessors, _ in ctx.folded:
        for a in accessors:
            if not isinstance(a, int) or a in keep:
                continue
            t = example_inputs[a]
            if t.dtype in (torch.uint8, torch.float8_e4m3fn) and not isinstance(t, ReleasedWeight):
                freed += release(t)  # t is a ReleasedWeight from now on
        # Released now or by an earlier compile of the same weights: either way the entry cannot refresh.
        if any(isinstance(a, int) and isinstance(example_inputs[a], ReleasedWeight) for a in accessors):
            entry.mark_released()
    report.released_bytes = freed
    if freed:
        report.note(f"released {freed} bytes of FP4 source weights (release_source_weights=True)")


def _publish(report: GraphReport, on_report) -> None:
    log.info("nvfp4_marlin %s: %s; %d rewritten, %d left alone, %d sibling groups merged", report.graph,
             report.decision, report.rewritten, len(report.skipped), report.merged)
    log.debug("%s", report)
    if on_report is not None:
        on_report(report)


class NVFP4MarlinBackend:
    """A configured backend: torch.compile(model, backend=backend_with(...))."""

    __name__ = NAME

    def __init__(self, options: BackendOptions, on_report: Callable[[GraphReport], None] | None = None):
        self.options = options
        self.on_report = on_report

    def __call__(self, gm: fx.GraphModule, example_inputs: list, mode: str | None = None,
                 options: dict | None = None):
        opts = self.options
        if mode is not None or options:
            merged = {**_as_dict(opts), **(options or {})}
            opts = BackendOptions.parse(mode or opts.mode, merged)
        return compile_graph(gm, example_inputs, opts, self.on_report)


def _as_dict(opts: BackendOptions) -> dict:
    d = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name != "inductor"}
    d.update(opts.inductor)
    return d


def backend_with(mode: str | None = None, options: dict | None = None, *,
                 on_report: Callable[[GraphReport], None] | None = None, **option_kwargs: Any) -> NVFP4MarlinBackend:
    """A backend object with options bound: mode and options together, or options as keywords."""
    return NVFP4MarlinBackend(BackendOptions.parse(mode, {**(options or {}), **option_kwargs}), on_report)


def nvfp4_marlin_backend(gm: fx.GraphModule, example_inputs: list, mode: str | None = None,
                         options: dict | None = None):
    """The entry point torch.compile(backend="nvfp4_marlin") calls (mode/options forwarded by torch.compile)."""
    return compile_graph(gm, example_inputs, BackendOptions.parse(mode, options))


def register() -> None:
    """Register "nvfp4_marlin" with Dynamo unless it is already known. When the package is installed, torch
    finds it through the entry point and registers it itself when the name is first used (re-registering
    then would raise "duplicate name"); registering here covers source checkouts without the entry point."""
    from importlib.metadata import EntryPoint

    from torch._dynamo.backends import registry

    if NAME in getattr(registry, "_COMPILER_FNS", {}):
        return
    if isinstance(getattr(registry, "_BACKENDS", {}).get(NAME), EntryPoint):
        return  # discovered but not loaded yet: lookup_backend will load this very function
    registry.register_backend(nvfp4_marlin_backend, name=NAME)


register()
