"""The tactics of nvfp4::marlin_gemm on CUDA and the process-wide selector behind gemm="auto" (docs/tactics.md).

    marlin.<config>  the W4A16 kernel with one tile config forced (nvfp4_C.marlin_gemm(..., config=i));
                     configs and their names come from the extension (nvfp4_C.marlin_gemm_configs())
    marlin.<config>.fit  a wgmma or decode config whose K splits stay in clusters that all fit at once (fewer
                     splits rather than the FP32 workspace; nvfp4_C.marlin_gemm_fit_clusters_flag())
    dequant          the weight dequantized to x.dtype from the Marlin layout (nvfp4_C.marlin_dequantize,
                     exactly formats.marlin.marlin_dequantize) + F.linear (cuBLAS): wins at large M
    marlin           the fallback: the kernel choosing its config by M (what gemm="marlin" runs)

`run_gemm(x2, ..., gemm)` is what the op's CUDA kernel calls with a 2-D, contiguous, 16-byte aligned x.
gemm="auto" profiles each (device, N, K, M bucket, dtype) once on random activations (the real weights) and
caches the winner (ops/tactics.py); during CUDA graph capture only cached choices or the fallback are used.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
from importlib import metadata

import torch
import torch.nn.functional as F

from . import _C
from .tactics import ProblemKey, SharedSelector, Tactic, TacticSet, cuda_median_ms, m_bucket

GEMM_CHOICES = ("auto", "marlin", "dequant")
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def available() -> bool:
    """The compiled tactics exist (extension loaded with the config argument and the dequantize kernel)."""
    return all(_C.has_kernel(op) for op in ("marlin_gemm", "marlin_dequantize", "marlin_gemm_configs",
                                            "marlin_gemm_fit_clusters_flag"))


def dequantize_weight(qweight, scales, global_scale, size_n: int, size_k: int, dtype: torch.dtype) -> torch.Tensor:
    """Marlin layout -> dense [size_n, size_k] weight in dtype on the GPU (values of marlin_dequantize)."""
    return torch.ops.nvfp4_C.marlin_dequantize(qweight, scales, global_scale.reshape(-1).contiguous(), size_n, size_k, dtype)


# Configs built for a few rows only: the decode kernel makes one pass over the whole weight per tile of 8 or 16
# rows of x (csrc/marlin/gemv_kernel.cuh), so it is not profiled for larger M buckets (a prefill-sized M would
# stream the weight hundreds of times just to be rejected).
CONFIG_MAX_M = {"gemv8": 8, "gemv16": 16, "sw16x512": 16, "gemv16b": 16, "gemv8b": 8}

# Configs that also run as a `.fit` tactic: the wgmma configs (prefill) and the decode configs, whose K splits
# often overflow the resident clusters on small layers (4096 x 4096: 32 tiles x 8 splits against 30 clusters of 8)
# and then go through the FP32 workspace and a last-CTA sum. The mma.sync configs (m16 .. large) have none: on the
# H200 `auto` picked one of them at 1 of 36 points (docs/kernels.md, twelfth-session table); their `.fit` is not
# measured.
FIT_CONFIG_PREFIXES = ("wg", "gemv", "sw")


def _has_cluster_split_k() -> bool:
    """Split-K in thread-block clusters on the current device: the kernels use it on SM 9.x only (csrc/marlin/
    gemm_launch.cuh resident_clusters). Elsewhere a `.fit` tactic launches exactly what its plain config does, so
    profiling it would only repeat that measurement."""
    return torch.cuda.get_device_capability()[0] == 9


def _marlin_tactic(name: str, config: int, max_m: int | None = None, needs_clusters: bool = False) -> Tactic:
    def run(x2, qweight, scales, global_scale, bias, size_n, size_k):
        return torch.ops.nvfp4_C.marlin_gemm(x2, qweight, scales, global_scale.reshape(-1).contiguous(), bias, size_n,
                                             size_k, config)

    reasons = ([f"built for M <= {max_m}"] if max_m is not None else []) + \
        (["splits in thread-block clusters (SM 9.x only)"] if needs_clusters else [])
    if not reasons:
        return Tactic(name, run)

    def applies(key: ProblemKey) -> bool:
        return (max_m is None or key.m_bucket <= max_m) and (not needs_clusters or _has_cluster_split_k())

    return Tactic(name, run, applies=applies, not_applicable="; ".join(reasons))


def _dequant_linear(x2, qweight, scales, global_scale, bias, size_n, size_k):
    return F.linear(x2, dequantize_weight(qweight, scales, global_scale, size_n, size_k, x2.dtype), bias)


def extension_build_id() -> str:
    """Hash of the compiled extension: a rebuilt kernel gets a fresh cache scope."""
    path = getattr(importlib.import_module(_C.EXTENSION), "__file__", None)
    if not path:
        return "unknown"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def library_version() -> str:
    try:
        version = metadata.version("nvfp4_compile")
    except metadata.PackageNotFoundError:
        version = "source"
    return f"nvfp4_compile {version}; torch {torch.__version__}; cuda {torch.version.cuda}"


@functools.cache
def device_label(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    return f"{props.name} ({props.multi_processor_count} SMs)"


@functools.cache
def tactic_set() -> TacticSet:
    if not available():
        raise RuntimeError(f"nvfp4_compile: GEMM tactics need the CUDA extension ({_C.LOAD_ERROR or 'not built'})")
    configs = list(torch.ops.nvfp4_C.marlin_gemm_configs())
    tactics = [_marlin_tactic(f"marlin.{name}", i, CONFIG_MAX_M.get(name)) for i, name in enumerate(configs)]
    # Those configs once more with K split only as finely as their clusters all fit on the GPU (csrc/marlin/
    # marlin.h kConfigFitClusters): fewer splits against the workspace path, which wins depends on the shape.
    fit = torch.ops.nvfp4_C.marlin_gemm_fit_clusters_flag()
    tactics += [_marlin_tactic(f"marlin.{name}.fit", i | fit, CONFIG_MAX_M.get(name), needs_clusters=True)
                for i, name in enumerate(configs) if name.startswith(FIT_CONFIG_PREFIXES)]
    tactics.append(Tactic("dequant", _dequant_linear))
    return TacticSet("marlin_gemm", tuple(tactics), fallback=_marlin_tactic("marlin", -1), build=extension_build_id())


_shared = SharedSelector(tactic_set, library_version)
selector, set_selector = _shared.get, _shared.set  # the process-wide marlin_gemm selector


def problem_key(x2: torch.Tensor, size_n: int, size_k: int) -> ProblemKey:
    return ProblemKey(device_label(x2.device.index), int(size_n), int(size_k), m_bucket(x2.shape[0]),
                      DTYPE_NAMES[x2.dtype])


def _measure_on_random_activations(key: ProblemKey, device, dtype, args):
    """measure(tactic) for the selector: median ms on random x [M bucket, K] (made once) and the real weights."""
    x = None

    def measure(tactic: Tactic) -> float:
        nonlocal x
        if x is None:
            gen = torch.Generator(device=device).manual_seed(key.m_bucket)  # leaves the global RNG alone
            x = torch.randn(key.m_bucket, key.k, device=device, generator=gen).to(dtype)
        return cuda_median_ms(lambda: tactic.run(x, *args), device)

    return measure


def choose(x2, qweight, scales, global_scale, bias, size_n: int, size_k: int, gemm: str = "auto") -> Tactic:
    ts = tactic_set()
    if gemm == "marlin":
        return ts.fallback
    if gemm == "dequant":
        return ts.get("dequant")
    if gemm != "auto":
        raise ValueError(f"nvfp4::marlin_gemm: gemm must be one of {GEMM_CHOICES}, got {gemm!r}")
    key = problem_key(x2, size_n, size_k)
    args = (qweight, scales, global_scale, bias, size_n, size_k)
    return selector().select(key, _measure_on_random_activations(key, x2.device, x2.dtype, args))


def run_gemm(x2, qweight, scales, global_scale, bias, size_n: int, size_k: int, gemm: str = "auto") -> torch.Tensor:
    """x2 [M, K] (contiguous, 16-byte aligned) -> [M, N] with the tactic `gemm` names or auto selects."""
    tactic = choose(x2, qweight, scales, global_scale, bias, size_n, size_k, gemm)
    return tactic.run(x2, qweight, scales, global_scale, bias, size_n, size_k)
