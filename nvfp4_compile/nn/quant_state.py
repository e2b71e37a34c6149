"""What NVFP4Linear and NVFP4Experts share: the quantized state lives in buffers whose dtypes are the format.

`model.to(torch.bfloat16)` casts every floating buffer, and float8_e4m3fn counts as floating: it would turn
the block scales into BF16 and round the FP32 per-tensor scales. So these modules let `.to()`/`.cuda()`
move their buffers between devices but never change their dtypes, and loading checks dtypes instead of
letting `copy_` convert numerically (a uint8 byte copied into an E4M3 buffer is a different number).
"""
from __future__ import annotations

import torch
from torch import nn

from ..formats import decode_scale_from_amax, quantize_nvfp4

ACTS = ("nvfp4", "bf16")  # activation handling: W4A4 (quantize activations) or W4A16 (weight-only)


def stable_decode_scale(d: torch.Tensor) -> torch.Tensor:
    """The FP32 decode scale nearest d that survives both checkpoint conventions exactly.

    compressed-tensors stores g = 1/d; for ~14% of FP32 values fp32(1/fp32(1/d)) != d, so such a d would
    come back from an export/load round trip one ulp off. One round trip lands on a fixed point (a
    reciprocal of an FP32 value), so scales made here are taken through it once: a relative change of at
    most ~1e-7, far below NVFP4's own error, bought for bit-identical round trips in both conventions.
    """
    d = d.float()
    return 1.0 / (1.0 / d)


# Input (activation) decode scale used when no calibration data is given: the encode scale is then 1, so
# a block scale is amax_block / 6 itself. E4M3 keeps its full 3-bit mantissa for block amax in
# [6 * 2^-6, 2688] ~ [0.094, 2688], which covers typical normalized hidden states; calibrate
# (nn.calibrate) for activations far outside that range.
DEFAULT_INPUT_SCALE = 1.0


def input_scale_from_amax(amax, shape=()) -> torch.Tensor:
    """Decode input scale amax/2688 (FP32, convention-stable, broadcast to `shape`); None -> DEFAULT_INPUT_SCALE."""
    if amax is None:
        return torch.full(shape, DEFAULT_INPUT_SCALE, dtype=torch.float32)
    amax = torch.as_tensor(amax, dtype=torch.float32).detach().cpu()
    return stable_decode_scale(decode_scale_from_amax(amax)).expand(shape).clone()


def quantize_weight(w: torch.Tensor, what: str = "weight"):
    """quantize_nvfp4 with the per-tensor scale from w's amax, made convention-stable.
    Returns (packed uint8, block scales e4m3, decode scale fp32 scalar)."""
    if not w.is_floating_point():
        raise TypeError(f"{what}: must be floating to quantize, got {w.dtype}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{what}: contains inf or NaN; NVFP4 cannot represent them")
    amax = w.abs().amax() if w.numel() else w.new_zeros(())
    return quantize_nvfp4(w, stable_decode_scale(decode_scale_from_amax(amax)))


def check_act(act: str) -> None:
    if act not in ACTS:
        raise ValueError(f"act must be 'nvfp4' (W4A4: activations quantized) or 'bf16' (weight-only), got {act!r}")


def module_device(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


class QuantizedBuffers(nn.Module):
    """Base class: buffers keep their dtype under `.to(dtype)`; state-dict loads check dtypes."""

    def _apply(self, fn, recurse=True):
        fixed = {id(b) for b in self._buffers.values() if b is not None}

        def keep_dtype(t):
            out = fn(t)
            if id(t) in fixed and out.dtype != t.dtype:
                out = t.to(device=out.device)  # follow the device move, drop the dtype cast
            return out

        return super()._apply(keep_dtype, recurse)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        bad = False
        for name, buf in self._buffers.items():
            key = prefix + name
            if buf is None or key not in state_dict or name in self._non_persistent_buffers_set:
                continue
            got = state_dict[key].dtype
            bit_format = buf.dtype in (torch.uint8, torch.float8_e4m3fn)
            if (bit_format and got != buf.dtype) or (not bit_format and not got.is_floating_point):
                error_msgs.append(f"dtype mismatch for {key}: the module stores {buf.dtype}, the state dict has {got}")
                bad = True
        if not bad:
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
