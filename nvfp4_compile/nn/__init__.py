"""NVFP4 modules (Blackwell-style source ops), model conversion, and checkpoint loading/export."""
from .calibrate import DEFAULT_INPUT_SCALE, Calibration, calibrate
from .checkpoint import load_nvfp4_checkpoint, save_nvfp4_checkpoint
from .convert import DEFAULT_SKIP, quantize_model
from .experts import NVFP4Experts, describe_experts, is_experts_module
from .linear import NVFP4Linear
from .report import ConversionReport

__all__ = [
    "DEFAULT_INPUT_SCALE",
    "DEFAULT_SKIP",
    "Calibration",
    "ConversionReport",
    "NVFP4Experts",
    "NVFP4Linear",
    "calibrate",
    "describe_experts",
    "is_experts_module",
    "load_nvfp4_checkpoint",
    "quantize_model",
    "save_nvfp4_checkpoint",
]
