"""quantize_model: swap a floating model's nn.Linear and stacked-expert modules for NVFP4 ones, in place.

Skip patterns are fnmatch patterns matched against a module's qualified name or any dotted suffix of it:
"lm_head" matches "lm_head" and "model.lm_head"; "mlp.gate" matches "layers.0.mlp.gate" (not "gate_proj").
DEFAULT_SKIP keeps the output head and MoE routers in high precision, as NVFP4 exporters (ModelOpt) do:
router logits pick the experts, and a flipped top-k choice costs far more than the router's tiny GEMM saves.
"""
from __future__ import annotations

from fnmatch import fnmatch

from torch import nn

from ..formats import BLOCK_SIZE
from .calibrate import calibrate
from .experts import NVFP4Experts, describe_experts, is_experts_module
from .linear import NVFP4Linear
from .quant_state import DEFAULT_INPUT_SCALE, check_act
from .report import ConversionReport

DEFAULT_SKIP = ("lm_head", "mlp.gate", "*router*")


def matching_pattern(name: str, patterns) -> str | None:
    for pat in patterns:
        if fnmatch(name, pat) or fnmatch(name, "*." + pat):
            return pat
    return None


def linear_problem(linear: nn.Linear) -> str | None:
    """Why an nn.Linear cannot become an NVFP4Linear, or None."""
    if not linear.weight.is_floating_point():
        return f"weight dtype {linear.weight.dtype} is not floating"
    if linear.in_features % BLOCK_SIZE:
        return f"in_features={linear.in_features} is not a multiple of {BLOCK_SIZE}"
    return None


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _input_note(calib, table, name) -> str:
    if calib is None:
        return f"input_scale={DEFAULT_INPUT_SCALE} (default, not calibrated)"
    return "input_scale calibrated" if name in table else f"input_scale={DEFAULT_INPUT_SCALE} (no calibration data reached it)"


def quantize_model(model: nn.Module, act: str = "nvfp4", skip=DEFAULT_SKIP, calib_inputs=None,
                   swizzled: bool = True) -> ConversionReport:
    """Replace eligible modules of `model` in place; returns the report (print it for a table).

    act: "nvfp4" (W4A4, activations quantized with calibrated or default input scales) or "bf16"
    (weight-only). calib_inputs: iterable of model inputs (tensor, args tuple or kwargs dict) used to
    calibrate the activation scales when act="nvfp4".
    """
    check_act(act)
    report = ConversionReport()
    calib = None
    if calib_inputs is not None:
        if act == "nvfp4":
            calib = calibrate(model, calib_inputs)
        else:
            report.notes.append("calib_inputs ignored: act='bf16' quantizes no activations")

    plan = []  # (name, new module)
    for name, module in model.named_modules():
        if isinstance(module, (NVFP4Linear, NVFP4Experts)):
            report.add_skipped(name, "already NVFP4")
            continue
        is_linear = isinstance(module, nn.Linear)
        if not (is_linear or is_experts_module(module)):
            continue
        if not name:
            report.add_skipped("<root>", "the root module cannot be replaced in place")
            continue
        pat = matching_pattern(name, skip)
        if pat is not None:
            report.add_skipped(name, f"name matches skip pattern {pat!r}")
            continue
        if is_linear:
            problem = linear_problem(module)
            if problem:
                report.add_skipped(name, problem)
                continue
            amax = calib.linear.get(name) if calib else None
            plan.append((name, NVFP4Linear.from_linear(module, act=act, input_amax=amax, swizzled=swizzled)))
            detail = f"[{module.out_features}x{module.in_features}] act={act}"
            if act == "nvfp4":
                detail += ", " + _input_note(calib, calib.linear if calib else {}, name)
            report.add_converted(name, "NVFP4Linear", detail)
        else:
            try:
                info = describe_experts(module)
            except ValueError as err:
                report.add_skipped(name, str(err))
                continue
            a13, a2 = calib.experts.get(name, (None, None)) if calib else (None, None)
            plan.append((name, NVFP4Experts.from_experts(module, act=act, a13_amax=a13, a2_amax=a2)))
            detail = (f"E={info.num_experts} H={info.hidden_dim} I={info.intermediate_dim} "
                      f"{info.activation} act={act}")
            if act == "nvfp4":
                detail += ", " + _input_note(calib, calib.experts if calib else {}, name)
            report.add_converted(name, "NVFP4Experts", detail)
    for name, new in plan:
        set_submodule(model, name, new)
    return report
