"""benchmarks/ncu_phases.py (the phase split of docs/kernels.md's ncu tables) on a hand-written source page: a
kernel with a prologue, a main loop (barrier, two HGMMA, the wgmma wait, 100+ instructions, the back edge) and an
end, with known stall samples per instruction."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import ncu_phases  # noqa: E402

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed","stall_barrier",'
          '"stall_math","stall_barrier (Not Issued)"')


def source_page(rows) -> str:
    lines = ['"Kernel Name","void marlin_wgmma_kernel<Cfg>(Params)",', HEADER]
    for i, (source, samples, executed, barrier, math) in enumerate(rows):
        lines.append(f'"0x{i:04x}","{source}","{samples}","{executed}","{barrier}","{math}","0"')
    return "\n".join(lines) + "\n"


def kernel_rows():
    """20 prologue instructions (1 sample each), a loop of 120 instructions run 10 times, 30 end instructions."""
    rows = [("MOV R1, R2", 1, 1, 0, 0)] * 20
    rows += [("BAR.SYNC.DEFER_BLOCKING 0x0", 4, 10, 4, 0)]
    rows += [("HGMMA.64x64x16.F32.BF16 R24, R56, gdesc[UR8], R24", 2, 10, 0, 2)] * 2
    rows += [("WARPGROUP.DEPBAR.LE gsb0, 0x1", 2, 10, 0, 2)]
    rows += [("LOP3.LUT R1, R2, 0x1b001b, RZ, 0xc0, !PT", 1, 10, 0, 1)] * 100
    rows += [("@!P1 BRA `(.L_x_1)", 1, 10, 0, 1)]
    rows += [("STG.E [R2.64], R3", 3, 1, 0, 0)] * 30
    return rows


def test_phases_split_samples_and_count_the_loop(capsys):
    (name, rows), = list(ncu_phases.kernels(source_page(kernel_rows())))
    assert name == "void marlin_wgmma_kernel<Cfg>(Params)"
    begin, end = ncu_phases.main_loop(rows)
    # from 15 instructions before the barrier (index 20) to the back edge (index 20 + 1 + 2 + 1 + 100 = 124)
    assert (begin, end) == (5, 124)
    ncu_phases.report(name, rows)
    out = capsys.readouterr().out
    total = 20 + 4 + 4 + 2 + 100 + 1 + 90
    prologue, loop, tail = 5, 15 + 4 + 4 + 2 + 100 + 1, 90
    assert f"prologue {prologue / total:.2f}  main loop {loop / total:.2f}  end {tail / total:.2f}" in out
    assert "main-loop stalls: math 96% barrier 4%" in out
    # where the loop's 126 samples sit: 100 on LOP3, 15 on the MOVs before the barrier, 2 on the wgmma wait
    assert ("main-loop samples by opcode: LOP3 79.4% MOV 11.9% BAR 3.2% HGMMA 3.2% WARPGROUP.DEPBAR 1.6% BRA 0.8% "
            "(WARPGROUP.DEPBAR 1.6%)") in out
    # instructions run as often as the HGMMA (10 times), per pass: 1 BAR + 2 HGMMA + 1 wait + 100 LOP3 + 1 BRA
    assert "per main-loop pass: 105 instructions: LOP3 100.0 HGMMA 2.0 BAR 1.0 WARPGROUP 1.0 BRA 1.0" in out


def test_kernels_without_hgmma_are_skipped(capsys):
    rows = [("MOV R1, R2", 1, 1, 0, 0)] * 5
    (name, parsed), = list(ncu_phases.kernels(source_page(rows)))
    assert ncu_phases.main_loop(parsed) is None
    ncu_phases.report(name, parsed)
    assert capsys.readouterr().out == ""


def test_a_loop_of_another_shape_is_reported_not_guessed(capsys):
    """HGMMA but no barrier before it (e.g. a pipeline on mbarriers): named, not split by a wrong boundary."""
    rows = [row for row in kernel_rows() if not row[0].startswith("BAR.SYNC")]
    (name, parsed), = list(ncu_phases.kernels(source_page(rows)))
    assert ncu_phases.main_loop(parsed) is None
    ncu_phases.report(name, parsed)
    assert "no main loop of the expected shape" in capsys.readouterr().out
