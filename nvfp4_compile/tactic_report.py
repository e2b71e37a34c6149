"""tactic_choices(): which implementation gemm="auto" chose for every GEMM and MoE problem profiled on a device.

The choices are the tactic selectors' caches (ops/tactics.py): this process's profiles and, with the default
on-disk cache, earlier processes' on the same device, library version and kernel build. Each row shows the
winner, its time, the runner-up and the tactics that were not run (not applicable, or failed with the reason).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .ops.tactics import Choice, TacticSelector
from .passes.report import table


@dataclass(frozen=True)
class TacticRow:
    op: str
    problem: str  # ProblemKey.entry_name(): n, k, M bucket, dtype (and, for MoE, experts / top-k / activation)
    choice: Choice

    def cells(self) -> list[str]:
        times = sorted(self.choice.times_ms.items(), key=lambda item: item[1])
        best_ms = self.choice.times_ms[self.choice.best]
        runner_up = (f"{times[1][0]} {times[1][1] * 1e3:.1f} us ({times[1][1] / best_ms:.2f}x)"
                     if len(times) > 1 and best_ms > 0 else "-")
        not_run = ", ".join(sorted(self.choice.failed)) or "-"
        return [self.op, self.problem, self.choice.best, f"{best_ms * 1e3:.1f} us", runner_up, not_run]


@dataclass
class TacticChoices:
    device: str
    rows: list[TacticRow] = field(default_factory=list)
    note: str = ""  # why there is nothing to show, if so

    def __str__(self) -> str:
        head = f"nvfp4_compile tactic choices on {self.device or 'no device'}: {len(self.rows)} problem(s)"
        if self.note:
            head += f" ({self.note})"
        if not self.rows:
            return head
        body = table(["op", "problem", "chosen", "time", "runner-up", "not run"], [r.cells() for r in self.rows])
        return head + "\n" + body

    __repr__ = __str__


def _problem_order(name: str):
    """n=4096,k=4096,m=16,bf16 sorts by its numbers (m=2 before m=16)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[,=]", name)]


def rows_of(op: str, choices: dict[str, Choice]) -> list[TacticRow]:
    return [TacticRow(op, name, choices[name]) for name in sorted(choices, key=_problem_order)]


def _default_selectors() -> tuple[dict[str, TacticSelector], str]:
    from .ops import _C, gemm_tactics, moe_tactics

    selectors = {}
    if gemm_tactics.available():
        selectors["marlin_gemm"] = gemm_tactics.selector()
    if moe_tactics.available():
        selectors["marlin_moe"] = moe_tactics.selector()
    return selectors, "" if selectors else f"no CUDA tactics: extension {_C.LOAD_ERROR or 'not built'}"


def tactic_choices(device: str | None = None, selectors: dict[str, TacticSelector] | None = None) -> TacticChoices:
    """The cached choices of every tactic selector (default: marlin_gemm's and marlin_moe's) on `device` (a
    device label as ops.gemm_tactics.device_label gives; default: the current CUDA device)."""
    if device is None:
        if not torch.cuda.is_available():
            return TacticChoices("", note="no CUDA device: the CPU runs one reference kernel per op")
        from .ops.gemm_tactics import device_label

        device = device_label(torch.cuda.current_device())
    note = ""
    if selectors is None:
        selectors, note = _default_selectors()
    rows = [row for op, sel in selectors.items() for row in rows_of(op, sel.choices(device))]
    return TacticChoices(device, rows, note if not rows else "")
