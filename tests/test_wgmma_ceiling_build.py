"""benchmarks/wgmma_ceiling.py compiles for sm_90a, every case, without spills or serialized MMAs (no GPU needed;
skipped without nvcc).

The tool runs only on the device machine, where a broken build costs a device call; this compiles the same source
(its `cuda_source`, all cases) with its flags here. A spilling case would measure local-memory traffic, not the
instruction mix it names, and one whose MMAs ptxas serializes would measure one MMA group at a time.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import wgmma_ceiling  # noqa: E402


def test_case_filter_keeps_the_reference_and_the_named_cases():
    names = [wgmma_ceiling.CASES[i].name for i in wgmma_ceiling.case_indices("prmt")]
    assert names[0] == wgmma_ceiling.CASES[0].name and len(names) == 3
    assert all("prmt" in name for name in names[1:])
    assert wgmma_ceiling.case_indices("") == list(range(len(wgmma_ceiling.CASES)))


@pytest.mark.slow
def test_every_case_compiles_for_sm90a_without_spills_or_serialized_mmas(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc")
    from torch.utils.cpp_extension import include_paths

    # CPU wheels of torch ship the c10/cuda headers without the CMake-generated macros header they include; the
    # stand-in comes last on the include path, so a CUDA build of torch uses its own.
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
    source = tmp_path / "ceiling.cu"
    source.write_text(wgmma_ceiling.cuda_source(list(range(len(wgmma_ceiling.CASES)))))
    includes = [os.path.join(ROOT, "csrc"), *include_paths(), sysconfig.get_paths()["include"], str(tmp_path / "stub")]
    compiled = subprocess.run([nvcc, *wgmma_ceiling.NVCC_FLAGS, "-std=c++17", "-cubin", *(f"-I{p}" for p in includes),
                               "-o", str(tmp_path / "ceiling.cubin"), str(source)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    log = compiled.stdout + compiled.stderr
    assert re.findall(r"spilled to local memory in function '(\w+)'", log) == []
    # A case whose MMAs ptxas serializes (C7510 .. C7515) would measure one MMA group at a time, not the pattern.
    assert re.findall(r"wgmma.mma_async instructions are serialized.*?function '(\w+)'", log) == []
