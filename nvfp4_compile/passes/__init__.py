"""Graph rewrites of the nvfp4_marlin backend, run in this order by manager.PassManager:

    linear             quantize -> gemm (W4A4) and dequantize -> linear (W4A16)  ->  marlin_gemm
    strip_fused_quant  fused norm/activation + quantize producers feeding rewritten GEMMs -> BF16 ops
    merge_siblings     marlin_gemms reading one activation (q/k/v, gate/up) -> one GEMM, sliced back
    moe                fused_moe -> marlin_moe
    fold_constants     weight-only subgraphs (repack, unswizzle, scale math) evaluated once at compile time
"""
from .manager import PassContext, PassManager, default_passes
from .report import GraphReport

__all__ = ["PassContext", "PassManager", "default_passes", "GraphReport"]
