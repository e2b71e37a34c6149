"""Builds the optional CUDA extension `nvfp4_compile._C` (csrc/); package metadata lives in pyproject.toml.

The extension is built only when the installed torch has CUDA and nvcc is found; otherwise (CPU-only
torch, no toolkit, or NVFP4_COMPILE_SKIP_CUDA=1) the package installs without it and every op uses its torch
reference kernel. Install with `pip install --no-build-isolation -e .` so the build sees the installed torch.

    NVFP4_COMPILE_SKIP_CUDA=1      never build the extension
    NVFP4_COMPILE_SM80=1           also emit sm_80 code (doubles the build time; the wgmma configs stay Hopper-only)
    MAX_JOBS                       parallel compile jobs (default: all cores)
"""
from __future__ import annotations

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _nvcc_found(cuda_home: str | None) -> bool:
    if shutil.which("nvcc"):
        return True
    return bool(cuda_home) and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))


def _cuda_extension_kwargs() -> dict:
    """ext_modules + cmdclass for the CUDA build, or {} (with a printed reason) when it is skipped."""
    if _flag("NVFP4_COMPILE_SKIP_CUDA"):
        print("nvfp4_compile: NVFP4_COMPILE_SKIP_CUDA set; not building the CUDA extension")
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception as exc:  # no torch at build time: the pure-Python package still installs
        print(f"nvfp4_compile: torch not importable ({exc}); not building the CUDA extension")
        return {}
    if torch.version.cuda is None or not _nvcc_found(CUDA_HOME):
        print("nvfp4_compile: torch without CUDA or no nvcc; not building the CUDA extension")
        return {}
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    gencode = ["-gencode=arch=compute_90a,code=sm_90a"]
    if _flag("NVFP4_COMPILE_SM80"):
        gencode.append("-gencode=arch=compute_80,code=sm_80")
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    sources += sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    ext = CUDAExtension(
        name="nvfp4_compile._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-Xptxas=-warn-spills", *gencode, f"--threads={len(gencode)}"],
        },
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(**_cuda_extension_kwargs())
