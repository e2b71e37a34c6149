"""NVFP4 checkpoints: load (ModelOpt or compressed-tensors, detected from names/config) and export."""
from .load import FUSED_SHARDS, detect_convention, load_nvfp4_checkpoint
from .save import save_nvfp4_checkpoint

__all__ = ["FUSED_SHARDS", "detect_convention", "load_nvfp4_checkpoint", "save_nvfp4_checkpoint"]
