"""tactic_choices(): the cached gemm="auto" choices as a table (CPU: fake selectors and timings)."""
import re

import pytest
import torch

import nvfp4_compile
from nvfp4_compile.ops.tactics import ProblemKey, Tactic, TacticCache, TacticSelector, TacticSet
from nvfp4_compile.tactic_report import tactic_choices

DEVICE = "Fake GPU (132 SMs)"


def profiled_selector(tmp_path, op, timings_by_m, detail=""):
    """A selector that profiled one problem per M bucket; a tactic missing from a bucket's timings does not apply."""
    tactics = tuple(Tactic(n, lambda: None, applies=lambda key, n=n: n in timings_by_m[key.m_bucket],
                           not_applicable="not built for this M") for n in ("a", "b", "gemv"))
    sel = TacticSelector(TacticSet(op, tactics, tactics[0]), "v1", TacticCache(str(tmp_path)), capturing=lambda: False)
    for m, timings in timings_by_m.items():
        sel.select(ProblemKey(DEVICE, 4096, 2048, m, "bf16", detail), lambda tactic: timings[tactic.name])
    return sel


def test_rows_show_winner_runner_up_and_what_did_not_run(tmp_path):
    gemm = profiled_selector(tmp_path / "g", "marlin_gemm", {16: {"a": 0.02, "b": 0.03}, 2: {"a": 0.02, "b": 0.03,
                                                                                             "gemv": 0.01}})
    moe = profiled_selector(tmp_path / "m", "marlin_moe", {4096: {"a": 5.0, "b": 4.0}}, "E=8,topk=2,silu")
    report = tactic_choices(DEVICE, {"marlin_gemm": gemm, "marlin_moe": moe})
    assert [(r.op, r.problem, r.choice.best) for r in report.rows] == [
        ("marlin_gemm", "n=4096,k=2048,m=2,bf16", "gemv"),  # numeric order: m=2 before m=16
        ("marlin_gemm", "n=4096,k=2048,m=16,bf16", "a"),
        ("marlin_moe", "n=4096,k=2048,m=4096,bf16,E=8,topk=2,silu", "b"),
    ]
    assert [r.cells()[2:] for r in report.rows] == [
        ["gemv", "10.0 us", "a 20.0 us (2.00x)", "-"],
        ["a", "20.0 us", "b 30.0 us (1.50x)", "gemv"],  # gemv was not run at m=16
        ["b", "4000.0 us", "a 5000.0 us (1.25x)", "gemv"],
    ]
    lines = str(report).splitlines()
    assert lines[0] == f"nvfp4_compile tactic choices on {DEVICE}: 3 problem(s)"
    assert lines[1].split() == ["op", "problem", "chosen", "time", "runner-up", "not", "run"]
    assert [re.split(r"  +", line.strip()) for line in lines[3:]] == [r.cells() for r in report.rows]
    # another device sees nothing
    assert tactic_choices("Other GPU (114 SMs)", {"marlin_gemm": gemm}).rows == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour; tests/gpu covers the real selectors")
def test_without_cuda_says_why():
    report = nvfp4_compile.tactic_choices()
    assert report.rows == [] and "no CUDA device" in str(report)
