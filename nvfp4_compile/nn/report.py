"""ConversionReport: what quantize_model / load_nvfp4_checkpoint did to each module, printable as a table."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ConversionReport:
    converted: list[tuple[str, str, str]] = field(default_factory=list)  # (name, kind, detail)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    notes: list[str] = field(default_factory=list)

    def add_converted(self, name: str, kind: str, detail: str) -> None:
        self.converted.append((name, kind, detail))

    def add_skipped(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))

    @property
    def converted_names(self) -> list[str]:
        return [name for name, _, _ in self.converted]

    @property
    def skipped_names(self) -> dict[str, str]:
        return dict(self.skipped)

    def __str__(self) -> str:
        rows = [(n, "converted", f"{k}: {d}") for n, k, d in self.converted]
        rows += [(n, "skipped", r) for n, r in self.skipped]
        header = ("module", "status", "detail")
        widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(2)]
        lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]}"]
        lines.append("-" * len(lines[0]))
        lines += [f"{n:<{widths[0]}}  {s:<{widths[1]}}  {d}" for n, s, d in rows]
        lines.append(f"{len(self.converted)} converted, {len(self.skipped)} skipped")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
