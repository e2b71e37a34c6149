"""The wgmma kernels' register-hazard check (benchmarks/sass_stats.py, docs/kernels.md "Hopper wgmma kernel").

An HGMMA reads its A fragment from registers until a WARPGROUP.DEPBAR retires its group; the compiler does not
extend that lifetime by itself, and a kernel variant once had those registers overwritten across a loop's back
edge (silent wrong results that depend on timing). The check runs on SASS, so it needs no GPU: these tests
compile every wgmma config of csrc/marlin/configs.cuh for sm_90a with nvcc (skipped without nvcc or a
disassembler: nvdisasm, e.g. from the nvidia-cuda-nvdisasm wheel, or cuobjdump) and check the result, and test
the checker itself on hand-written SASS. The same compile also checks which configs ptxas serializes (one MMA
group at a time for lack of registers): exactly the known one, so a config change that serializes another fails.
A last test compiles the other configs (mma.sync tiles, decode) and accepts spills only where known.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import sass_stats  # noqa: E402


def loop(*body: str) -> str:
    """A kernel body in nvdisasm's format: a label, the instructions, a branch back to the label."""
    lines = [".L_x_1:"] + [f"        /*{16 * i:04x}*/                   {ins} ;" for i, ins in enumerate(body)]
    lines.append(f"        /*{16 * len(body):04x}*/              @!P1 BRA `(.L_x_1) ;")
    return "\n".join(lines)


ISSUE = ("WARPGROUP.ARRIVE", "HGMMA.64x128x16.F32.BF16 R24, R152, gdesc[UR4], R24, gsb0")


def test_checker_flags_a_write_to_a_fragment_still_being_read():
    # The group issued at the end of the loop is still running (DEPBAR keeps 1 pending) when the next iteration
    # writes R153, one of its A registers.
    body = loop("IADD3 R153, R1, R2, RZ", "LDS R160, [R3]", *ISSUE, "WARPGROUP.DEPBAR.LE gsb0, 0x1")
    hazards = sass_stats.wgmma_hazards(body)
    assert hazards and "IADD3 R153" in hazards[0]


def test_checker_accepts_writes_after_the_group_retires():
    body = loop("WARPGROUP.DEPBAR.LE gsb0, 0x0", "IADD3 R153, R1, R2, RZ", *ISSUE, "WARPGROUP.DEPBAR.LE gsb0, 0x1")
    assert sass_stats.wgmma_hazards(body) == []
    # A 128-bit load into R148..R151 ends just below the fragment R152..R155.
    body = loop("LDS.128 R148, [R3]", *ISSUE, "WARPGROUP.DEPBAR.LE gsb0, 0x1")
    assert sass_stats.wgmma_hazards(body) == []
    body = loop("LDS.128 R150, [R3]", *ISSUE, "WARPGROUP.DEPBAR.LE gsb0, 0x1")
    assert len(sass_stats.wgmma_hazards(body)) == 1


def disassembler() -> list[str] | None:
    """nvdisasm (PATH or the nvidia-cuda-nvdisasm wheel) or cuobjdump, as a command prefix for a cubin."""
    found = shutil.which("nvdisasm")
    if found is None and importlib.util.find_spec("nvidia") is not None:
        for base in importlib.util.find_spec("nvidia").submodule_search_locations or []:
            for sub in ("cu13", "cuda_nvdisasm"):
                candidate = os.path.join(base, sub, "bin", "nvdisasm")
                if os.path.exists(candidate):
                    found = candidate
    if found:
        return [found, "-c"]
    cuobjdump = shutil.which("cuobjdump")
    return [cuobjdump, "-sass"] if cuobjdump else None


def wgmma_configs() -> list[tuple[str, str]]:
    """(kernel, config alias) of every wgmma-based config in csrc/marlin/configs.cuh."""
    text = open(os.path.join(ROOT, "csrc", "marlin", "configs.cuh")).read()
    return [*(("marlin_wgmma_kernel", c) for c in re.findall(r"using (ConfigWg\w+) = WgmmaConfig<", text)),
            *(("marlin_stream_wgmma_kernel", c) for c in re.findall(r"using (ConfigSw\w+) = StreamWgmmaConfig<", text))]


# The flags of setup.py and torch's CUDAExtension that shape the device code.
NVCC_FLAGS = ["-cubin", "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xptxas=-warn-spills",
              "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__", f"-I{os.path.join(ROOT, 'csrc')}"]

# Kernels of the other configs (mma.sync tiles, decode) that spill, as a part of their mangled name, with the reason.
# gemv8 BF16: 8 bytes since the scale multiply-add takes its multiplier from constant memory (twelfth session,
# commit 3a1606b); stored once before the main loop and reloaded once after it (docs/kernels.md "Build").
KNOWN_SPILLS = {"marlin_gemv_kernelI13__nv_bfloat16NS_10GemvConfigILi2ELi4ELi6ELi2ELi1ELb0E"}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
def test_tile_and_decode_kernels_spill_only_where_known(tmp_path, arch):
    """Every mma.sync tile and decode config of csrc/marlin/configs.cuh, BF16 and FP16, compiled as setup.py does:
    ptxas reports spills only for the known kernels (a spill inside a main loop costs local-memory traffic per
    k-tile)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc")
    text = open(os.path.join(ROOT, "csrc", "marlin", "configs.cuh")).read()
    configs = [("marlin_gemm_kernel", c) for c in re.findall(r"using (Config\w+) = GemmConfig<", text)]
    configs += [("marlin_gemv_kernel", c) for c in re.findall(r"using (Config\w+) = GemvConfig<", text)]
    assert len(configs) >= 8
    source = ['#include "marlin/configs.cuh"', "namespace nvfp4 {"]
    source += [f"template __global__ void {kernel}<{dtype}, {cfg}>(const MarlinGemmParams);"
               for kernel, cfg in configs for dtype in ("__nv_bfloat16", "__half")]
    (tmp_path / "configs.cu").write_text("\n".join([*source, "}  // namespace nvfp4"]) + "\n")
    compiled = subprocess.run([nvcc, *NVCC_FLAGS, f"-arch={arch}", "-o", str(tmp_path / "configs.cubin"),
                               str(tmp_path / "configs.cu")], check=True, capture_output=True, text=True)
    spilled = set(re.findall(r"spilled to local memory in function '(\w+)'", compiled.stdout + compiled.stderr))
    known = {name for name in spilled if any(part in name for part in KNOWN_SPILLS)}
    assert spilled == known, f"new spills: {sorted(spilled - known)}"
    if arch == "sm_90a":  # the known spill is still there (else the list and docs/kernels.md are stale)
        assert len(known) == len(KNOWN_SPILLS), sorted(spilled)


# wgmma configs whose MMAs ptxas serializes (C7512, "insufficient register resources"), with the reason: 512
# threads x 2 CTAs per SM leave 64 registers, less than a group in flight needs (docs/kernels.md "Eleventh session").
KNOWN_SERIALIZED = {"ConfigWg64x256w4"}


def config_templates() -> dict[str, str]:
    """Config alias of each WgmmaConfig in csrc/marlin/configs.cuh -> its template arguments as mangled in a
    kernel name (WgmmaConfig<64, 1, 4, 4, 2> -> WgmmaConfigILi64ELi1ELi4ELi4ELi2EEE)."""
    text = open(os.path.join(ROOT, "csrc", "marlin", "configs.cuh")).read()
    return {alias: "WgmmaConfigI" + "".join(f"Li{v.strip()}E" for v in args.split(",")) + "E"
            for alias, args in re.findall(r"using (ConfigWg\w+) = WgmmaConfig<([^>]*)>", text)}


@pytest.mark.slow
def test_compiled_wgmma_kernels_have_no_register_hazards(tmp_path):
    nvcc, disasm = shutil.which("nvcc"), disassembler()
    if nvcc is None or disasm is None:
        pytest.skip("needs nvcc and nvdisasm or cuobjdump")
    configs = wgmma_configs()
    assert len(configs) >= 4
    source = ['#include "marlin/configs.cuh"', "namespace nvfp4 {"]
    for kernel, cfg in configs:
        for dtype in ("__nv_bfloat16", "__half"):
            source.append(f"template __global__ void {kernel}<{dtype}, {cfg}>(const MarlinGemmParams);")
    source.append("}  // namespace nvfp4")
    (tmp_path / "wgmma_configs.cu").write_text("\n".join(source) + "\n")
    cubin = tmp_path / "wgmma_configs.cubin"
    compiled = subprocess.run([nvcc, *NVCC_FLAGS, "-arch=sm_90a", "-o", str(cubin), str(tmp_path / "wgmma_configs.cu")],
                              check=True, capture_output=True, text=True)
    sass = subprocess.run([*disasm, str(cubin)], check=True, capture_output=True, text=True).stdout
    kernels = [(name, body) for name, body in sass_stats.kernels(sass) if "wgmma_kernel" in name]
    assert len(kernels) == 2 * len(configs)
    for name, body in kernels:
        assert "HGMMA" in body, name
        assert sass_stats.wgmma_hazards(body) == [], name
        assert not re.search(r"\b(LDL|STL)\b", body), f"{name} spills to local memory"
    # ptxas serializes wgmma (waits for each MMA group before the next) when the registers of a group in flight
    # do not fit: the kernel then cannot dequantize one k16 step while the tensor cores run the previous one.
    serialized = {alias for alias, template in config_templates().items()
                  for name in re.findall(r"serialized due to insufficient register resources for the function '(\w+)'",
                                         compiled.stdout + compiled.stderr)
                  if "marlin_wgmma_kernel" in name and template in name}
    assert serialized == KNOWN_SERIALIZED, f"wgmma serialized by ptxas in {sorted(serialized)}"
