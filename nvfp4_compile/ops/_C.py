"""Loads the compiled CUDA extension `nvfp4_compile._C` (csrc/) when it was built; never fails.

Importing the extension registers its kernels as `torch.ops.nvfp4_C.*` (private ops taking already
validated, contiguous inputs); the public `nvfp4::*` ops in this package call them for CUDA tensors and
fall back to their torch reference kernels when the extension is absent (CPU-only installs, a CUDA machine
without the build) or disabled with NVFP4_COMPILE_DISABLE_CUDA_KERNELS=1.
"""
from __future__ import annotations

import importlib
import os

import torch

EXTENSION = "nvfp4_compile._C"
LOAD_ERROR: str | None = None
try:
    importlib.import_module(EXTENSION)  # registers torch.ops.nvfp4_C.*

    LOADED = True
except Exception as exc:  # ImportError on CPU installs; an ABI mismatch must not break `import nvfp4_compile`
    LOADED = False
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def has_kernel(name: str) -> bool:
    """True when torch.ops.nvfp4_C.<name> exists and is not disabled by the environment."""
    if not LOADED or os.environ.get("NVFP4_COMPILE_DISABLE_CUDA_KERNELS", "0") not in ("", "0"):
        return False
    return hasattr(torch.ops.nvfp4_C, name)
