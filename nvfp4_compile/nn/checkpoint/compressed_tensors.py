"""compressed-tensors "nvfp4-pack-quantized" checkpoints (llm-compressor; schemes NVFP4 and NVFP4A16).

Per linear layer P:   P.weight_packed uint8 [N, K/2] (= ModelOpt weight), P.weight_scale e4m3 [N, K/16],
                      P.weight_global_scale fp32 [1] = 1 / weight_scale_2 (*encode*),
                      P.input_global_scale fp32 [1] = 1 / input_scale (*encode*; absent for NVFP4A16),
                      optionally P.weight_shape int [2] (the unpacked [N, K]), P.bias.
config.json "quantization_config": {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
    "config_groups": {g: {"targets": [...], "weights": {...}, "input_activations": {...} | null}}, "ignore": [...]}
Targets/ignore entries are module names, "re:<regex>" or a class name ("Linear"). Experts are stored per
expert (one linear layer each); this convention has no stacked-expert form.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...formats import BLOCK_SIZE, decode_to_encode, encode_to_decode
from .common import MODEL_CONFIG, CheckpointSource, QuantWeight, take

NAME = "compressed-tensors"
SUPPORTS_STACKED_EXPERTS = False
FORMAT = "nvfp4-pack-quantized"
_FP4_ARGS = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": BLOCK_SIZE, "symmetric": True}


def claims(src: CheckpointSource) -> bool:
    qc = src.quantization_config or {}
    return qc.get("quant_method") == "compressed-tensors" or any(k.endswith(".weight_packed") for k in src.tensors)


def _decode(key: str, t: torch.Tensor) -> torch.Tensor:
    if t.numel() != 1:
        raise ValueError(f"{key}: expected one global scale, got shape {tuple(t.shape)}")
    try:
        return encode_to_decode(t.float().reshape(()))
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


def extract(tensors: dict[str, torch.Tensor]) -> dict[str, QuantWeight]:
    records = {}
    for key in sorted(k for k in tensors if k.endswith(".weight_packed")):
        p = key[: -len(".weight_packed")]
        packed = take(tensors, key)
        shape = take(tensors, f"{p}.weight_shape", required=False)
        if shape is not None and [int(s) for s in shape.tolist()] != [packed.shape[0], 2 * packed.shape[-1]]:
            raise ValueError(f"{p}.weight_shape {shape.tolist()} does not match weight_packed {tuple(packed.shape)}")
        inp = take(tensors, f"{p}.input_global_scale", required=False)
        records[p] = QuantWeight(
            p,
            packed,
            take(tensors, f"{p}.weight_scale"),
            _decode(f"{p}.weight_global_scale", take(tensors, f"{p}.weight_global_scale")),
            None if inp is None else _decode(f"{p}.input_global_scale", inp),
            take(tensors, f"{p}.bias", required=False),
        ).validate()
    return records


def _matches(target: str, name: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or target == "Linear"


def module_act(names: list[str], src: CheckpointSource, has_input_scale: bool) -> str:
    qc = src.quantization_config
    if qc is None:
        return "nvfp4" if has_input_scale else "bf16"
    acts = set()
    for name in names[1:] or names:  # the checkpoint's own layer names (per-expert layers for experts)
        if any(_matches(t, name) and t != "Linear" for t in qc.get("ignore") or []):
            raise ValueError(f"{name}: has NVFP4 tensors but is listed in the config's ignore list")
        group = next((g for g in (qc.get("config_groups") or {}).values()
                      if any(_matches(t, name) for t in g.get("targets") or [])), None)
        if group is None:
            raise ValueError(f"{name}: has NVFP4 tensors but no config group targets it")
        fmt = group.get("format") or qc.get("format")
        w = group.get("weights") or {}
        if fmt not in (None, FORMAT) or w.get("num_bits") != 4 or w.get("type") != "float":
            raise NotImplementedError(f"{name}: config group is not NVFP4 ({fmt!r}, weights {w})")
        if w.get("group_size", BLOCK_SIZE) != BLOCK_SIZE:
            raise ValueError(f"{name}: group_size {w.get('group_size')} in the config; NVFP4 uses {BLOCK_SIZE}")
        acts.add("bf16" if group.get("input_activations") is None else "nvfp4")
    if len(acts) != 1:
        raise ValueError(f"{names[0]}: its layers are in config groups with different activation schemes")
    return acts.pop()


def export_linear(prefix: str, qw: QuantWeight) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.weight_packed": qw.weight, f"{prefix}.weight_scale": qw.weight_scale,
           f"{prefix}.weight_global_scale": decode_to_encode(qw.weight_scale_2).reshape(1)}
    if qw.input_scale is not None:
        out[f"{prefix}.input_global_scale"] = decode_to_encode(qw.input_scale).reshape(1)
    if qw.bias is not None:
        out[f"{prefix}.bias"] = qw.bias
    return out


def write_config(path: Path, acts: dict[str, str], excluded: list[str], producer: dict) -> None:
    """Merge quantization_config into config.json (created if absent): one config group per act."""
    groups = {}
    for act in sorted(set(acts.values())):
        groups[f"group_{len(groups)}"] = {
            "targets": sorted(n for n, a in acts.items() if a == act),
            "weights": {**_FP4_ARGS, "dynamic": False, "observer": "minmax"},
            "input_activations": {**_FP4_ARGS, "dynamic": "local", "observer": "minmax"} if act == "nvfp4" else None,
            "output_activations": None,
            "format": FORMAT,
        }
    qc = {"quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
          "config_groups": groups, "ignore": excluded}  # no producer field: compressed-tensors validates keys
    cfg_path = path / MODEL_CONFIG
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["quantization_config"] = qc
    cfg_path.write_text(json.dumps(cfg, indent=2))
