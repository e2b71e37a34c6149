"""NVIDIA ModelOpt (TensorRT-LLM HF export) NVFP4 checkpoints. Its names and decode scales are canonical.

Per linear layer P:   P.weight uint8 [N, K/2], P.weight_scale e4m3 [N, K/16], P.weight_scale_2 fp32 (decode),
                      P.input_scale fp32 (decode; absent for weight-only), P.bias (unquantized)
Stacked experts X (X = ...experts.gate_up_proj / ...experts.down_proj):
                      X uint8 [E, N, K/2], X_weight_scale [E, N, K/16], X_weight_scale_2 [E] (or one value),
                      X_input_scale (one value or [E])
hf_quant_config.json: {"quantization": {"quant_algo": "NVFP4" | "W4A16_NVFP4" | "MIXED_PRECISION",
                       "group_size": 16, "exclude_modules": [...], "quantized_layers": {name: {"quant_algo"}}}}
(newer exports put the same fields in config.json "quantization_config" with quant_method "modelopt").
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ...formats import BLOCK_SIZE
from .common import HF_QUANT_CONFIG, CheckpointSource, QuantWeight, take

NAME = "modelopt"
SUPPORTS_STACKED_EXPERTS = True
ALGO_ACT = {"NVFP4": "nvfp4", "W4A16_NVFP4": "bf16"}
ACT_ALGO = {act: algo for algo, act in ALGO_ACT.items()}


def quant_section(src: CheckpointSource) -> dict | None:
    if src.hf_quant_config is not None:
        return src.hf_quant_config.get("quantization", src.hf_quant_config)
    qc = src.quantization_config
    if qc is not None and qc.get("quant_method") == "modelopt":
        return qc
    return None


def claims(src: CheckpointSource) -> bool:
    return quant_section(src) is not None or any(k.endswith("weight_scale_2") for k in src.tensors)


def extract(tensors: dict[str, torch.Tensor]) -> dict[str, QuantWeight]:
    """Pop every quantized weight's tensors out of `tensors` (what stays is plain) into canonical records."""
    records = {}
    for key in sorted(k for k in tensors if k.endswith(".weight_scale_2")):
        p = key[: -len(".weight_scale_2")]
        records[p] = QuantWeight(
            p,
            take(tensors, f"{p}.weight"),
            take(tensors, f"{p}.weight_scale"),
            take(tensors, key).float(),
            _float(take(tensors, f"{p}.input_scale", required=False)),
            take(tensors, f"{p}.bias", required=False),
        ).validate()
    for key in sorted(k for k in tensors if k.endswith("_weight_scale_2")):
        x = key[: -len("_weight_scale_2")]
        records[x] = QuantWeight(
            x,
            take(tensors, x),
            take(tensors, f"{x}_weight_scale"),
            take(tensors, key).float(),
            _float(take(tensors, f"{x}_input_scale", required=False)),
        ).validate()
    return records


def _float(t):
    return None if t is None else t.float()


def module_act(names: list[str], src: CheckpointSource, has_input_scale: bool) -> str:
    """"nvfp4" or "bf16" for the module whose checkpoint names are `names` (first = the model module)."""
    q = quant_section(src)
    if q is None:
        return "nvfp4" if has_input_scale else "bf16"
    algo = q.get("quant_algo")
    if algo == "MIXED_PRECISION":
        layers = q.get("quantized_layers") or {}
        algos = {layers[n].get("quant_algo") for n in names if n in layers}
        if not algos:
            raise ValueError(f"{names[0]}: has NVFP4 tensors but is not listed in quantized_layers of the MIXED_PRECISION config")
        if len(algos) > 1:
            raise ValueError(f"{names[0]}: its parts are listed with different quant_algo {sorted(map(str, algos))}")
        algo = algos.pop()
    if algo not in ALGO_ACT:
        raise NotImplementedError(f"{names[0]}: quant_algo {algo!r} is not NVFP4 (supported: {sorted(ALGO_ACT)})")
    group = q.get("group_size", BLOCK_SIZE)
    if group != BLOCK_SIZE:
        raise ValueError(f"{names[0]}: group_size {group} in the config; NVFP4 uses {BLOCK_SIZE}")
    return ALGO_ACT[algo]


def export_linear(prefix: str, qw: QuantWeight) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.weight": qw.weight, f"{prefix}.weight_scale": qw.weight_scale,
           f"{prefix}.weight_scale_2": qw.weight_scale_2.float()}
    if qw.input_scale is not None:
        out[f"{prefix}.input_scale"] = qw.input_scale.float()
    if qw.bias is not None:
        out[f"{prefix}.bias"] = qw.bias
    return out


def export_stacked(x: str, qw: QuantWeight) -> dict[str, torch.Tensor]:
    out = {x: qw.weight, f"{x}_weight_scale": qw.weight_scale, f"{x}_weight_scale_2": qw.weight_scale_2.float()}
    if qw.input_scale is not None:
        out[f"{x}_input_scale"] = qw.input_scale.float()
    return out


def write_config(path: Path, acts: dict[str, str], excluded: list[str], producer: dict) -> None:
    """hf_quant_config.json: one quant_algo if every quantized layer has the same act, else MIXED_PRECISION."""
    section = {"quant_algo": None, "kv_cache_quant_algo": None, "group_size": BLOCK_SIZE, "exclude_modules": excluded}
    kinds = set(acts.values())
    if len(kinds) == 1:
        section["quant_algo"] = ACT_ALGO[kinds.pop()]
    elif kinds:
        section["quant_algo"] = "MIXED_PRECISION"
        section["quantized_layers"] = {n: {"quant_algo": ACT_ALGO[a], "group_size": BLOCK_SIZE} for n, a in acts.items()}
    with open(path / HF_QUANT_CONFIG, "w") as f:
        json.dump({"producer": producer, "quantization": section}, f, indent=2)
