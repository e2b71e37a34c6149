"""Activation calibration for W4A4: the per-tensor input scales (decode, amax/2688) of NVFP4 modules.

`calibrate(model, calib_inputs)` runs sample inputs through the (unquantized) model and records, with
forward hooks, the largest |activation| entering every nn.Linear and, for stacked-expert modules, the
largest |x| routed to each expert and the largest |act(x W13^T)| entering each expert's down projection.
Without calibration modules use quant_state.DEFAULT_INPUT_SCALE (1.0; the comment there says why).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..ops.moe import ACTIVATIONS as FP32_ACTIVATIONS
from .experts import describe_experts, is_experts_module
from .quant_state import DEFAULT_INPUT_SCALE  # noqa: F401  re-exported: the scale used without calibration


@dataclass
class Calibration:
    """Activation amax per module name: `linear[name]` scalar; `experts[name]` = (a13 [E], a2 [E])."""

    linear: dict[str, torch.Tensor] = field(default_factory=dict)
    experts: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _call(model: nn.Module, inp):
    if isinstance(inp, dict):
        return model(**inp)
    if isinstance(inp, (tuple, list)):
        return model(*inp)
    return model(inp)


def _running_max(store: dict, key, value: torch.Tensor) -> None:
    value = value.detach().float().cpu()
    store[key] = value if key not in store else torch.maximum(store[key], value)


def _expert_amax(info, hidden, top_k_index):
    """Per-expert amax of the routed inputs and of the down-projection inputs, from the float weights."""
    e = info.num_experts
    a13, a2 = torch.zeros(e), torch.zeros(e)
    x = hidden.float()
    act = FP32_ACTIVATIONS[info.activation]  # the nonlinearity fused_moe applies, in FP32
    for expert in top_k_index.unique().tolist():
        if not 0 <= expert < e:
            continue
        tokens = (top_k_index == expert).any(dim=-1).nonzero().squeeze(-1)
        xe = x[tokens]
        h = act(xe @ info.w13[expert].float().T)
        a13[expert] = xe.abs().amax()
        a2[expert] = h.abs().amax()
    return a13, a2


@torch.no_grad()
def calibrate(model: nn.Module, calib_inputs) -> Calibration:
    """Run each item of calib_inputs (a tensor, an args tuple or a kwargs dict) and record input amax.

    Experts that no calibration token was routed to get the largest amax of their module's other
    experts (0 if none was hit; input_scale_from_amax maps 0 to 1.0).
    """
    result = Calibration()
    handles = []

    def linear_hook(name):
        def hook(module, args):
            _running_max(result.linear, name, args[0].abs().amax())

        return hook

    def experts_hook(name, info):
        def hook(module, args, kwargs):
            bound = list(args) + [kwargs[k] for k in ("hidden_states", "top_k_index") if k in kwargs]
            a13, a2 = _expert_amax(info, bound[0], bound[1])
            old = result.experts.get(name)
            result.experts[name] = (a13, a2) if old is None else (torch.maximum(old[0], a13), torch.maximum(old[1], a2))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(linear_hook(name)))
        elif is_experts_module(module):
            try:
                info = describe_experts(module)
            except ValueError:
                continue  # quantize_model reports why it is skipped
            handles.append(module.register_forward_pre_hook(experts_hook(name, info), with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        for inp in calib_inputs:
            _call(model, inp)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for name, (a13, a2) in result.experts.items():
        result.experts[name] = (_fill_unrouted(a13), _fill_unrouted(a2))
    return result


def _fill_unrouted(amax: torch.Tensor) -> torch.Tensor:
    return torch.where(amax > 0, amax, amax.max())
