"""What both checkpoint conventions share: reading sources, the canonical quantized-weight record, fusing.

Each convention module (modelopt.py, compressed_tensors.py) translates its tensor names and scale
convention into QuantWeight records (ModelOpt names, *decode* scales) and back; everything after that
(matching records to model modules, building NVFP4 modules, loading) is convention-free.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ...formats import BLOCK_SIZE, reconcile_shard_scales

HF_QUANT_CONFIG = "hf_quant_config.json"
MODEL_CONFIG = "config.json"


@dataclass
class CheckpointSource:
    tensors: dict[str, torch.Tensor]
    hf_quant_config: dict | None = None  # ModelOpt's hf_quant_config.json
    quantization_config: dict | None = None  # config.json["quantization_config"]
    origin: str = "<state dict>"


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def read_source(src) -> CheckpointSource:
    """A directory of *.safetensors (+ hf_quant_config.json / config.json), one .safetensors file (configs
    read from its directory), or an in-memory state dict."""
    if isinstance(src, dict):
        return CheckpointSource(dict(src))
    from safetensors.torch import load_file

    path = Path(os.fspath(src))
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"load_nvfp4_checkpoint: no *.safetensors files in {path}")
        folder = path
    elif path.is_file():
        files, folder = [path], path.parent
    else:
        raise FileNotFoundError(f"load_nvfp4_checkpoint: {path} does not exist")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(str(f))
        dup = sorted(set(part) & set(tensors))
        if dup:
            raise ValueError(f"load_nvfp4_checkpoint: tensors {dup[:5]} appear in more than one file ({f.name})")
        tensors.update(part)
    model_config = _read_json(folder / MODEL_CONFIG) or {}
    return CheckpointSource(
        tensors, _read_json(folder / HF_QUANT_CONFIG), model_config.get("quantization_config"), str(path)
    )


@dataclass
class QuantWeight:
    """One quantized weight (a linear layer's, or a stack of experts') in canonical form.

    weight uint8 [..., N, K/2]; weight_scale e4m3 [..., N, K/16] linear layout; weight_scale_2 fp32
    decode, [] or one per leading index ([E]); input_scale fp32 decode ([] or [E]) or None (weight-only).
    """

    name: str  # where it came from, for messages
    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_scale_2: torch.Tensor
    input_scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Logical (unpacked) weight shape [..., N, K]."""
        return (*self.weight.shape[:-1], 2 * self.weight.shape[-1])

    def validate(self) -> "QuantWeight":
        n = self.name
        if self.weight.dtype != torch.uint8:
            raise TypeError(f"{n}: packed weight must be uint8, got {self.weight.dtype}")
        if self.weight_scale.dtype != torch.float8_e4m3fn:
            raise TypeError(f"{n}: weight_scale must be float8_e4m3fn, got {self.weight_scale.dtype}")
        if self.weight.dim() < 2:
            raise ValueError(f"{n}: packed weight must be [..., N, K/2], got shape {tuple(self.weight.shape)}")
        *lead, k = self.shape
        if k % BLOCK_SIZE:
            raise ValueError(f"{n}: K={k} is not a multiple of {BLOCK_SIZE}")
        want = (*lead, k // BLOCK_SIZE)
        if tuple(self.weight_scale.shape) != want:
            raise ValueError(
                f"{n}: weight_scale has shape {tuple(self.weight_scale.shape)}, expected {want} for a packed "
                f"weight of shape {tuple(self.weight.shape)}"
            )
        per = tuple(lead[:-1])  # [] for a linear layer, [E] for an expert stack
        for what, t in (("weight_scale_2", self.weight_scale_2), ("input_scale", self.input_scale)):
            if t is None:
                continue
            if not t.is_floating_point():
                raise TypeError(f"{n}: {what} must be floating, got {t.dtype}")
            if t.numel() != 1 and tuple(t.shape) != per:
                raise ValueError(f"{n}: {what} must be a scalar{' or ' + str(per) if per else ''}, got {tuple(t.shape)}")
            if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
                raise ValueError(f"{n}: {what} must be positive and finite")
        if self.bias is not None and tuple(self.bias.shape) != tuple(lead):
            raise ValueError(f"{n}: bias has shape {tuple(self.bias.shape)}, expected {tuple(lead)}")
        return self

    def per_index(self, t: torch.Tensor | None, count: int) -> torch.Tensor | None:
        """A scalar-or-[E] scale as fp32 [count]."""
        return None if t is None else t.float().reshape(-1).expand(count).clone()


def fuse_rows(parts: list[QuantWeight], name: str) -> QuantWeight:
    """Concatenate shards along N (q/k/v, gate/up) into one weight with one per-tensor scale.

    Different per-tensor scales are reconciled (formats.reconcile_shard_scales: d = max, block scales
    rescaled); input scales take the max (the shards see the same input, so they agree in any sane
    checkpoint; the max never overflows)."""
    ks = {p.shape[-1] for p in parts}
    if len(ks) != 1:
        raise ValueError(f"{name}: shards {[p.name for p in parts]} have different K {sorted(ks)}")
    scales, d = reconcile_shard_scales([p.weight_scale for p in parts], [p.weight_scale_2 for p in parts])
    inputs = [p.input_scale for p in parts]
    if any(i is None for i in inputs) and not all(i is None for i in inputs):
        raise ValueError(f"{name}: only some of the shards {[p.name for p in parts]} have an input scale")
    biases = [p.bias for p in parts]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        raise ValueError(f"{name}: only some of the shards {[p.name for p in parts]} have a bias")
    return QuantWeight(
        name=name,
        weight=torch.cat([p.weight for p in parts], dim=-2),
        weight_scale=torch.cat(scales, dim=-2),
        weight_scale_2=d.reshape(()),
        input_scale=None if inputs[0] is None else torch.stack([i.float().reshape(()) for i in inputs]).max(),
        bias=None if biases[0] is None else torch.cat(biases),
    ).validate()


def split_rows(qw: QuantWeight, sizes: list[int], names: list[str]) -> list[QuantWeight]:
    """The inverse of fuse_rows for export: shards sharing the fused per-tensor scales (exact)."""
    out = []
    for w, sf, nm in zip(qw.weight.split(sizes, dim=-2), qw.weight_scale.split(sizes, dim=-2), names):
        out.append(replace(qw, name=nm, weight=w.contiguous(), weight_scale=sf.contiguous(), bias=None))
    return out


def take(tensors: dict[str, torch.Tensor], key: str, required: bool = True) -> torch.Tensor | None:
    """Pop tensors[key]; a missing required tensor is a clear error naming it."""
    if key in tensors:
        return tensors.pop(key)
    if required:
        raise KeyError(f"checkpoint is missing tensor {key!r}")
    return None
