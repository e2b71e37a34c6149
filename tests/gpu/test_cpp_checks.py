"""The C++ argument checks of the extension raise RuntimeError with their message instead of killing the process.

On the device machine (torch 2.11.0+cu130) a TORCH_CHECK whose message had several parts killed the process
(SIGSEGV) instead of raising; csrc now gives every check one string. Each bad call runs in a fresh interpreter so
that a crash fails its own test, not the session."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from nvfp4_compile.ops import _C

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not _C.LOADED, reason="CUDA extension not built"),
]

# The arguments of nvfp4_C.marlin_moe up to the checked one are valid; the rest need not be.
MOE_SETUP = """
dev, bf16 = "cuda", torch.bfloat16
x = torch.randn(4, 64, device=dev, dtype=bf16)
ids = torch.zeros(4, 2, device=dev, dtype=torch.int32)
w = torch.ones(4, 2, device=dev)
empty = torch.empty(0, device=dev)
def moe(x=x, ids=ids, w=w, w13_q=empty, activation=0, tile=-1):
    return torch.ops.nvfp4_C.marlin_moe(x, ids, w, w13_q, empty, empty, empty, empty, empty, activation, 64, tile)
"""

CASES = {
    "moe activation": ("moe(activation=2)", "activation must be 0"),
    "moe tile": ("moe(tile=10 ** 6)", "tile must be -1"),
    "moe top-k 65": ("moe(ids=torch.zeros(4, 65, device=dev, dtype=torch.int32), w=torch.ones(4, 65, device=dev))",
                     r"top-k must be in \[1, 64\]"),
    "moe 1025 experts": ("moe(w13_q=torch.zeros(1025, 1, 1, device=dev, dtype=torch.int32))", "1 <= E <= 1024"),
    "moe w13 stack": ("moe(w13_q=torch.zeros(2, 4, 256, device=dev))", "w13_q must be contiguous int32"),
    "align 2000 experts": ("torch.ops.nvfp4_C.moe_align(ids, 2000, 16)", "at most 1024 experts"),
    "align rows": ("torch.ops.nvfp4_C.moe_align(ids, 8, 0)", r"rows must be in \[1, 1024\]"),
    "gemm x dtype": ("torch.ops.nvfp4_C.marlin_gemm(x.float(), empty, empty, empty, None, 64, 64, -1)",
                     "x must be bfloat16 or float16"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_call_raises_its_message(name):
    call, expected = CASES[name]
    script = textwrap.dedent(f"""
        import re, torch
        import nvfp4_compile  # loads the extension
        {textwrap.indent(MOE_SETUP, '        ').strip()}
        try:
            {call}
        except RuntimeError as exc:
            print("RAISED", bool(re.search({expected!r}, str(exc))), str(exc).splitlines()[0])
        else:
            print("NO ERROR")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{name}: the process died (rc {done.returncode}), no raise\n{done.stderr[-2000:]}"
    assert done.stdout.startswith("RAISED True"), f"{name}: {done.stdout!r} {done.stderr[-1000:]}"
