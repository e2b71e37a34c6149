"""save_nvfp4_checkpoint: write a model with NVFP4 modules as a ModelOpt or compressed-tensors checkpoint.

Output: `model.safetensors` (quantized layers in the convention's names and scale convention, every other
tensor as is; a tied tensor is written once) plus the convention's config (hf_quant_config.json or
config.json "quantization_config"). Experts are written per expert (gate_proj/up_proj/down_proj, gate and
up sharing the fused per-tensor scale, so reloading fuses them back exactly) or, for ModelOpt, stacked.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..experts import NVFP4Experts
from ..linear import NVFP4Linear
from . import compressed_tensors, modelopt
from .common import QuantWeight, split_rows

CONVENTIONS = {"modelopt": modelopt, "compressed-tensors": compressed_tensors}
PRODUCER = {"name": "nvfp4_compile", "version": "0.1.0"}


def _linear_record(name: str, m: NVFP4Linear) -> QuantWeight:
    return QuantWeight(name, m.weight, m.weight_scale, m.weight_scale_2,
                       m.input_scale if m.act == "nvfp4" else None, m.bias)


def _expert_records(name: str, m: NVFP4Experts) -> tuple[QuantWeight, QuantWeight]:
    w4a4 = m.act == "nvfp4"
    return (QuantWeight(f"{name}.w13", m.w13, m.w13_scale, m.w13_scale_2, m.a13_scale if w4a4 else None),
            QuantWeight(f"{name}.w2", m.w2, m.w2_scale, m.w2_scale_2, m.a2_scale if w4a4 else None))


def _per_expert(name: str, m: NVFP4Experts, conv) -> tuple[dict, list[str]]:
    w13, w2 = _expert_records(name, m)
    tensors, layers = {}, []
    gated = m.activation == "silu"
    for e in range(m.num_experts):
        def one(qw, nm):
            return QuantWeight(nm, qw.weight[e], qw.weight_scale[e], qw.weight_scale_2[e],
                               None if qw.input_scale is None else qw.input_scale[e])

        base = f"{name}.{e}"
        up_parts = (split_rows(one(w13, base), [m.intermediate_dim] * 2, [f"{base}.gate_proj", f"{base}.up_proj"])
                    if gated else [one(w13, f"{base}.up_proj")])
        for qw in (*up_parts, one(w2, f"{base}.down_proj")):
            tensors.update(conv.export_linear(qw.name, qw))
            layers.append(qw.name)
    return tensors, layers


def _stacked(name: str, m: NVFP4Experts, conv) -> tuple[dict, list[str]]:
    w13, w2 = _expert_records(name, m)
    up = f"{name}.{'gate_up_proj' if m.activation == 'silu' else 'up_proj'}"
    return {**conv.export_stacked(up, w13), **conv.export_stacked(f"{name}.down_proj", w2)}, [name]


def _plain_tensors(model: nn.Module, skip_prefixes: list[str]) -> dict[str, torch.Tensor]:
    """Every state-dict tensor outside the quantized modules; tied tensors once (safetensors rejects
    shared storage, the loader accepts a tied name that is absent)."""
    out, seen = {}, set()
    for k, t in model.state_dict().items():
        if any(k.startswith(p + ".") for p in skip_prefixes):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        out[k] = t
    return out


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor that owns its storage (safetensors refuses views sharing memory, e.g. w2[e])."""
    t = t.detach().cpu().contiguous()
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


@torch.no_grad()
def save_nvfp4_checkpoint(model: nn.Module, path, convention: str = "modelopt", experts_layout: str = "per_expert") -> Path:
    """Write `model` (with NVFP4Linear / NVFP4Experts modules) to directory `path`; returns the path."""
    if convention not in CONVENTIONS:
        raise ValueError(f"save_nvfp4_checkpoint: convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
    if experts_layout not in ("per_expert", "stacked"):
        raise ValueError(f"save_nvfp4_checkpoint: experts_layout must be 'per_expert' or 'stacked', got {experts_layout!r}")
    conv = CONVENTIONS[convention]
    if experts_layout == "stacked" and not conv.SUPPORTS_STACKED_EXPERTS:
        raise ValueError(f"save_nvfp4_checkpoint: {convention} has no stacked-experts form; use experts_layout='per_expert'")

    quantized, acts, excluded, prefixes = {}, {}, [], []
    for name, m in model.named_modules():
        if isinstance(m, NVFP4Linear):
            quantized.update(conv.export_linear(name, _linear_record(name, m)))
            acts[name] = m.act
        elif isinstance(m, NVFP4Experts):
            export = _stacked if experts_layout == "stacked" else _per_expert
            tensors, layers = export(name, m, conv)
            quantized.update(tensors)
            acts.update({layer: m.act for layer in layers})
        elif isinstance(m, nn.Linear):
            excluded.append(name)
            continue
        else:
            continue
        prefixes.append(name)
    if not prefixes:
        raise ValueError("save_nvfp4_checkpoint: the model has no NVFP4Linear or NVFP4Experts modules")
    plain = _plain_tensors(model, prefixes)
    clash = sorted(set(plain) & set(quantized))
    if clash:
        raise ValueError(f"save_nvfp4_checkpoint: tensor names {clash[:5]} are produced twice")

    from safetensors.torch import save_file

    out = Path(os.fspath(path))
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: _own_storage(v) for k, v in {**plain, **quantized}.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    conv.write_config(out, acts, excluded, PRODUCER)
    return out
