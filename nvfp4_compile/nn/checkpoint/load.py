"""load_nvfp4_checkpoint: put an NVFP4 checkpoint (either convention) into a model skeleton.

Steps: read the tensors and configs -> detect the convention from names/config -> the convention pops
its quantized weights into canonical records (decode scales) -> each nn.Linear / experts module of the
model that has records becomes an NVFP4Linear / NVFP4Experts sized from them -> one load_state_dict of
the records plus every remaining (plain) tensor, with missing/unexpected names reported by name.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..convert import set_submodule
from ..experts import NVFP4Experts, describe_experts, is_experts_module
from ..linear import NVFP4Linear
from ..quant_state import check_act, module_device
from ..report import ConversionReport
from . import compressed_tensors, modelopt
from .common import CheckpointSource, QuantWeight, fuse_rows, read_source

CONVENTIONS = (modelopt, compressed_tensors)
# Fused model layers loaded from separately stored shards (rows concatenated in this order).
FUSED_SHARDS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
# Per-expert layer names: transformers/Qwen style first, Mixtral (w1 gate, w3 up, w2 down) second.
EXPERT_ROLES = {"gate": ("gate_proj", "w1"), "up": ("up_proj", "w3"), "down": ("down_proj", "w2")}
# Per-layer KV-cache scales some exporters add; this runtime keeps the KV cache in BF16, so they are unused.
IGNORED_SUFFIXES = ("k_scale", "v_scale")


def detect_convention(src: CheckpointSource):
    found = [c for c in CONVENTIONS if c.claims(src)]
    if not found:
        raise ValueError(
            f"load_nvfp4_checkpoint: {src.origin} holds no NVFP4 tensors (no '*.weight_scale_2' as in ModelOpt, "
            "no '*.weight_packed' as in compressed-tensors) and no quantization config"
        )
    if len(found) > 1:
        raise ValueError(f"load_nvfp4_checkpoint: {src.origin} mixes ModelOpt and compressed-tensors names/configs")
    return found[0]


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


class _Loader:
    def __init__(self, src, conv, act, swizzled, fused_shards):
        self.src, self.conv, self.act, self.swizzled, self.fused_shards = src, conv, act, swizzled, fused_shards

    def module_act(self, names: list[str], has_input_scale: bool, what: str) -> str:
        act = self.act or self.conv.module_act(names, self.src, has_input_scale)
        if act == "nvfp4" and not has_input_scale:
            raise ValueError(
                f"{what}: W4A4 (act='nvfp4') needs activation input scales and the checkpoint has none; "
                "load with act='bf16' to run it weight-only"
            )
        return act

    # ---------------------------------------------------------------------------------------------------
    def linear(self, name: str, module: nn.Module, records: dict[str, QuantWeight]):
        if name in records:
            qw, names = records.pop(name), [name]
        else:
            parent, _, leaf = name.rpartition(".")
            shards = [_join(parent, s) for s in self.fused_shards.get(leaf, ())]
            if not shards or not all(s in records for s in shards):
                return None
            qw, names = fuse_rows([records.pop(s) for s in shards], name), shards
        if qw.weight.dim() != 2:
            raise ValueError(f"{qw.name}: a stacked [E, N, K/2] weight cannot load into the linear layer {name}")
        n, k = qw.shape
        if (n, k) != (module.out_features, module.in_features):
            raise ValueError(
                f"{qw.name}: checkpoint weight is [{n} x {k}] (packed {tuple(qw.weight.shape)}), the model's "
                f"layer {name} is [{module.out_features} x {module.in_features}]"
            )
        has_bias = module.bias is not None
        if has_bias != (qw.bias is not None):
            raise ValueError(f"{name}: the model layer {'has' if has_bias else 'has no'} bias, the checkpoint "
                             f"{'has none' if has_bias else 'has one'} ({qw.name}.bias)")
        act = self.module_act([name, *names], qw.input_scale is not None, name)
        if has_bias:
            dtype = module.bias.dtype
        else:
            w = getattr(module, "weight", None)
            dtype = w.dtype if isinstance(module, nn.Linear) and w.is_floating_point() else torch.bfloat16
        swizzled = module.swizzled if isinstance(module, NVFP4Linear) else self.swizzled
        new = NVFP4Linear(k, n, bias=has_bias, act=act, dtype=dtype, swizzled=swizzled, device=module_device(module))
        state = {"weight": qw.weight, "weight_scale": qw.weight_scale, "weight_scale_2": qw.weight_scale_2.reshape(())}
        if act == "nvfp4":
            state["input_scale"] = qw.input_scale.reshape(())
        if has_bias:
            state["bias"] = qw.bias
        detail = f"[{n}x{k}] act={act}" + (f", fused from {len(names)} shards" if len(names) > 1 else "")
        return new, state, ("NVFP4Linear", detail)

    # ---------------------------------------------------------------------------------------------------
    def experts(self, name: str, module: nn.Module, records: dict[str, QuantWeight]):
        per_expert = re.compile(rf"{re.escape(name)}\.(\d+)\.(\w+)$")
        mine = [k for k in records if k.startswith(name + ".")]
        if not mine:
            return None
        if isinstance(module, NVFP4Experts):
            e, h, i, activation = module.num_experts, module.hidden_dim, module.intermediate_dim, module.activation
        else:
            try:
                info = describe_experts(module)
            except ValueError as err:
                raise ValueError(f"{name}: the checkpoint has NVFP4 experts for it, but the model's experts module "
                                 f"is not supported: {err}") from None
            e, h, i, activation = info.num_experts, info.hidden_dim, info.intermediate_dim, info.activation
        gated = activation == "silu"
        stacked_names = [_join(name, "gate_up_proj" if gated else "up_proj"), _join(name, "down_proj")]
        if any(s in records for s in stacked_names):
            missing = [s for s in stacked_names if s not in records]
            if missing:
                raise KeyError(f"{name}: stacked experts need {stacked_names}; the checkpoint lacks {missing}")
            if any(per_expert.match(k) for k in mine):
                raise ValueError(f"{name}: the checkpoint has both stacked and per-expert tensors")
            w13, w2 = (records.pop(s) for s in stacked_names)
            names = stacked_names
        elif any(per_expert.match(k) for k in mine):
            w13, w2, names = self._stack_per_expert(name, e, gated, records)
        else:
            return None
        rows = 2 * i if gated else i
        for qw, want in ((w13, (e, rows, h)), (w2, (e, h, i))):
            if qw.shape != want:
                raise ValueError(f"{qw.name}: checkpoint weights are [{' x '.join(map(str, qw.shape))}], the model's "
                                 f"{name} needs [{' x '.join(map(str, want))}] (E, N, K)")
            if qw.bias is not None:
                raise ValueError(f"{qw.name}: expert biases are not supported")
        has_inputs = w13.input_scale is not None and w2.input_scale is not None
        act = self.module_act([name, *names], has_inputs, name)
        new = NVFP4Experts(e, h, i, activation, act, device=module_device(module))
        state = {"w13": w13.weight, "w13_scale": w13.weight_scale, "w13_scale_2": w13.per_index(w13.weight_scale_2, e),
                 "w2": w2.weight, "w2_scale": w2.weight_scale, "w2_scale_2": w2.per_index(w2.weight_scale_2, e)}
        if act == "nvfp4":
            state["a13_scale"] = w13.per_index(w13.input_scale, e)
            state["a2_scale"] = w2.per_index(w2.input_scale, e)
        layout = "stacked" if names == stacked_names else "per-expert"
        return new, state, ("NVFP4Experts", f"E={e} H={h} I={i} {activation} act={act}, {layout} checkpoint")

    def _stack_per_expert(self, name: str, e: int, gated: bool, records: dict[str, QuantWeight]):
        roles = ("gate", "up", "down") if gated else ("up", "down")
        found, missing = {}, []
        for idx in range(e):
            for role in roles:
                keys = [f"{name}.{idx}.{alias}" for alias in EXPERT_ROLES[role]]
                hit = [k for k in keys if k in records]
                if len(hit) > 1:
                    raise ValueError(f"{name}: expert {idx} has both {hit} for its {role} projection")
                if hit:
                    found[idx, role] = records.pop(hit[0])
                else:
                    missing.append(keys[0])
        if missing:
            raise KeyError(f"{name}: the checkpoint lacks expert layers {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        w13s = [fuse_rows([found[x, "gate"], found[x, "up"]], f"{name}.{x}.gate_up") if gated else found[x, "up"]
                for x in range(e)]
        w2s = [found[x, "down"] for x in range(e)]
        names = [qw.name for qw in found.values()]
        return _stack(f"{name} (w13)", w13s), _stack(f"{name} (w2)", w2s), names


def _stack(name: str, parts: list[QuantWeight]) -> QuantWeight:
    def stack(ts):
        return None if ts[0] is None else torch.stack([t.float().reshape(()) for t in ts])

    shapes = {p.shape for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"{name}: experts have different weight shapes {sorted(shapes)}")
    inputs = [p.input_scale for p in parts]
    if any(t is None for t in inputs) and not all(t is None for t in inputs):
        raise ValueError(f"{name}: only some experts have input scales")
    return QuantWeight(
        name,
        torch.stack([p.weight for p in parts]),
        torch.stack([p.weight_scale for p in parts]),
        stack([p.weight_scale_2 for p in parts]),
        stack(inputs),
        None if parts[0].bias is None else torch.stack([p.bias for p in parts]),
    ).validate()


def _aliases(model: nn.Module) -> dict[str, set[str]]:
    """State-dict names that share one tensor (tied weights) -> the other names of that tensor."""
    groups: dict[int, set[str]] = {}
    for n, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(t), set()).add(n)
    return {n: g - {n} for g in groups.values() for n in g}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool) -> list[str]:
    expected = model.state_dict(keep_vars=True)
    aliases = _aliases(model)
    unexpected = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state and not (aliases.get(k, set()) & state.keys()))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise KeyError("load_nvfp4_checkpoint: the checkpoint does not match the model: " + "; ".join(parts))
    try:
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    except RuntimeError as err:
        raise ValueError(f"load_nvfp4_checkpoint: {err}") from None
    return missing


@torch.no_grad()
def load_nvfp4_checkpoint(model: nn.Module, source, act: str | None = None, swizzled: bool = True,
                          strict: bool = True, fused_shards=FUSED_SHARDS) -> ConversionReport:
    """Load an NVFP4 checkpoint into `model`, replacing layers that the checkpoint stores quantized.

    source: a directory of *.safetensors (+ hf_quant_config.json / config.json), one .safetensors file,
    or a state dict. act: None -> from the checkpoint's config (ModelOpt quant_algo / compressed-tensors
    input_activations; without a config, from whether input scales are present); "bf16" forces
    weight-only (what a Hopper W4A16 runtime does with a W4A4 checkpoint); "nvfp4" forces W4A4.
    strict: missing or unexpected tensor names are an error (tied weights may be stored once).
    """
    if act is not None:
        check_act(act)
    src = read_source(source)
    conv = detect_convention(src)
    plain = dict(src.tensors)
    records = conv.extract(plain)
    report = ConversionReport(notes=[f"convention: {conv.NAME} ({src.origin})"])
    ignored = sorted(k for k in plain if k.rpartition(".")[2] in IGNORED_SUFFIXES)
    for k in ignored:
        del plain[k]
    if ignored:
        report.notes.append(f"ignored {len(ignored)} KV-cache scales (e.g. {ignored[0]}): the KV cache stays unquantized")

    loader = _Loader(src, conv, act, swizzled, fused_shards)
    built = []  # (name, new module, its state)
    for name, module in model.named_modules():
        if any(name.startswith(b + ".") for b, _, _ in built):
            continue
        if isinstance(module, NVFP4Experts) or is_experts_module(module):
            result = loader.experts(name, module, records)
        elif isinstance(module, (nn.Linear, NVFP4Linear)):
            result = loader.linear(name, module, records)
        else:
            continue
        if result is not None:
            if not name:
                raise ValueError("load_nvfp4_checkpoint: the root module itself cannot be replaced in place")
            new, state, (kind, detail) = result
            built.append((name, new, state))
            report.add_converted(name, kind, detail)
    if records:
        left = sorted(records)
        raise KeyError(f"load_nvfp4_checkpoint: quantized tensors for {left[:8]}{' ...' if len(left) > 8 else ''} "
                       "match no nn.Linear or experts module of the model")

    for name, new, _ in built:
        set_submodule(model, name, new)
    for name, _, state in built:
        plain.update({f"{name}.{k}": v for k, v in state.items()})
    missing = _load_state(model, plain, strict)
    if missing:
        report.notes.append(f"not in the checkpoint, left as initialized: {missing[:8]}")
    return report
