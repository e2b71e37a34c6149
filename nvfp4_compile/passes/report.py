"""What the backend did to one compiled graph: the report the passes fill in and `explain` prints.

Three kinds of entries:
    Rewrite  a source op (or pattern) replaced by a target op: kind, node, shapes, target op
    Folded   a weight-only subgraph evaluated once at compile time (marlin_repack, unswizzle, scale math):
             bytes it produced, seconds it took, whether it came from the cache of an earlier compile
    Skip     a node left as it was, and why
plus free-form notes (target decision, training graphs, released source weights).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Rewrite:
    pass_name: str
    kind: str  # "linear_w4a4" | "linear_w4a16" | "fused_quant" | "moe"
    node: str  # the FX node that was replaced
    weight: str  # where the weight comes from (module path when Dynamo knows it)
    shapes: str  # e.g. "x bf16[4, 64] @ w[128, 64]^T"
    target: str  # the op it became


@dataclass
class Folded:
    name: str  # the graph input that now holds the result
    sources: str  # the parameters/buffers it was computed from
    ops: str  # the ops that were evaluated, e.g. "marlin_repack, unswizzle_scales"
    bytes: int
    seconds: float
    cached: bool  # reused from an earlier compile of the same weights


@dataclass
class Skip:
    pass_name: str
    node: str
    op: str
    reason: str


@dataclass
class GraphReport:
    graph: str = "graph"
    device: str = ""
    decision: str = ""  # what the backend decided for the whole graph, e.g. "rewrite (cpu)"
    rewrites: list[Rewrite] = field(default_factory=list)
    folded: list[Folded] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    released_bytes: int = 0

    def rewrite(self, pass_name, kind, node, weight, shapes, target) -> None:
        self.rewrites.append(Rewrite(pass_name, kind, str(node), weight, shapes, target))

    def skip(self, pass_name, node, op, reason) -> None:
        self.skipped.append(Skip(pass_name, str(node), op, reason))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def count(self, kind: str) -> int:
        return sum(r.kind == kind for r in self.rewrites)

    @property
    def rewritten(self) -> int:
        """Source ops rewritten (merges of already rewritten GEMMs are counted apart: `merged`)."""
        return len(self.rewrites) - self.merged

    @property
    def merged(self) -> int:
        return self.count("merge_siblings")

    @property
    def folded_bytes(self) -> int:
        return sum(f.bytes for f in self.folded)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return format_reports([self])


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**16 else f"{n} B"


def format_reports(reports: list[GraphReport]) -> str:
    """All graphs' entries as readable tables (one section per graph)."""
    out = []
    for rep in reports:
        out.append(f"== {rep.graph} [{rep.device}]: {rep.decision}")
        if rep.rewrites:
            out.append(table(
                ["kind", "node", "weight", "shapes", "target"],
                [[r.kind, r.node, r.weight, r.shapes, r.target] for r in rep.rewrites],
            ))
        if rep.folded:
            out.append("folded weight constants (evaluated once at compile time):")
            out.append(table(
                ["constant", "from", "ops", "size", "time", "cached"],
                [[f.name, f.sources, f.ops, _mib(f.bytes), f"{f.seconds * 1e3:.1f} ms", "yes" if f.cached else "no"]
                 for f in rep.folded],
            ))
        if rep.skipped:
            out.append("left as they were:")
            out.append(table(
                ["pass", "node", "op", "reason"], [[s.pass_name, s.node, s.op, s.reason] for s in rep.skipped]
            ))
        for n in rep.notes:
            out.append(f"note: {n}")
        out.append(
            f"summary: {rep.rewritten} rewritten, {len(rep.skipped)} left alone, "
            + (f"{rep.merged} sibling group(s) merged, " if rep.merged else "")
            + f"{_mib(rep.folded_bytes)} of folded constants"
            + (f", {_mib(rep.released_bytes)} of source weights released" if rep.released_bytes else "")
        )
    return "\n".join(out)
