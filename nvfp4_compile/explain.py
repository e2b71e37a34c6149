"""explain(model, *inputs): what the nvfp4_marlin backend rewrites in a model, and what it leaves alone and why.

Compiles a fresh torch.compile wrapper of the model with the backend and runs it once on the inputs (the
same graphs a real compile sees, graph breaks included), collecting every graph's report. Source weights
are never released here, whatever the options say.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backend import backend_with
from .passes.report import Folded, GraphReport, Rewrite, Skip, format_reports


@dataclass
class ExplainReport:
    graphs: list[GraphReport] = field(default_factory=list)

    @property
    def rewrites(self) -> list[Rewrite]:
        return [r for g in self.graphs for r in g.rewrites]

    @property
    def folded(self) -> list[Folded]:
        return [f for g in self.graphs for f in g.folded]

    @property
    def skipped(self) -> list[Skip]:
        return [s for g in self.graphs for s in g.skipped]

    def count(self, kind: str) -> int:
        return sum(g.count(kind) for g in self.graphs)

    def to_dict(self) -> dict:
        return {"graphs": [g.to_dict() for g in self.graphs]}

    def __str__(self) -> str:
        head = f"nvfp4_marlin explain: {len(self.graphs)} compiled graph(s)"
        return head + ("\n" + format_reports(self.graphs) if self.graphs else "")

    __repr__ = __str__


def explain(model, *example_inputs, **compile_kwargs) -> ExplainReport:
    """Report what torch.compile(model, backend="nvfp4_marlin", **compile_kwargs) does to model.

    compile_kwargs: mode, options (the backend's and Inductor's), fullgraph, dynamic. Run it the way you
    run the model (e.g. under torch.no_grad()): grad mode decides whether a graph counts as training."""
    report = ExplainReport()
    mode = compile_kwargs.pop("mode", None)
    options = dict(compile_kwargs.pop("options", None) or {})
    options["release_source_weights"] = False
    backend = backend_with(mode=mode, options=options, on_report=report.graphs.append)
    compiled = torch.compile(model, backend=backend, **compile_kwargs)
    compiled(*example_inputs)
    return report
