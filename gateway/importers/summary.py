"""The result of an import: what happened to every input line, and what was created.

Every data line of an imported file ends as exactly one *outcome*: imported in some form (counted
in :attr:`ImportSummary.outcomes`, e.g. ``sale_line``, ``refund_line``, ``adjustment``,
``product_created``) or skipped with a reason (one :class:`SkippedLine` in
:attr:`ImportSummary.skipped`). ``imported + skipped == lines`` is the invariant the importers
keep and the tests check.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (empty, wrong header, unreadable).

    Bad *rows* never raise: they are skipped with a reason in the summary. ``str(error)`` is a
    message fit for the command line.
    """


@dataclass(frozen=True)
class SkippedLine:
    """One input line that was not imported.

    Attributes:
        line: the physical line number in the file (the header is line 1).
        code: a stable snake_case category (``malformed``, ``non_merchandise``, ``already_imported``, ...).
        reason: a human-readable explanation of this particular line.
    """

    line: int
    code: str
    reason: str


@dataclass
class ImportSummary:
    """Counts per outcome, skipped lines with reasons, records created and money totals.

    Attributes:
        kind: what was imported (``"products"`` or ``"online_retail"``).
        source: the file imported.
        lines: data lines read (header excluded).
        outcomes: per-line outcomes that imported something, e.g. ``{"sale_line": 38000}``.
        skipped: every skipped line, in file order after :meth:`finish`.
        records: records created or touched, e.g. ``{"products_created": 3000, "orders_created": 12000}``.
        totals: money totals in the file's currency (``Decimal``), e.g. ``{"sales": ..., "refunds": ...}``.
        rules: the rules the importer applied, one sentence each (rendered at the end).
        warnings: lines that were imported but with a problem (e.g. stock not set); not skips.
        elapsed_s: wall-clock seconds the import took.
    """

    kind: str
    source: str = ""
    lines: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    skipped: list[SkippedLine] = field(default_factory=list)
    records: Counter[str] = field(default_factory=Counter)
    totals: dict[str, Decimal] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    warnings: list[SkippedLine] = field(default_factory=list)
    elapsed_s: float = 0.0

    # -- recording ---------------------------------------------------------------------------------
    def imported(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` lines as imported with ``outcome``."""
        self.outcomes[outcome] += n

    def skip(self, line: int, code: str, reason: str) -> None:
        """Record one skipped line (``line`` is the file line number)."""
        self.skipped.append(SkippedLine(line, code, reason))

    def warn(self, line: int, code: str, reason: str) -> None:
        """Record a problem with a line that was nevertheless imported."""
        self.warnings.append(SkippedLine(line, code, reason))

    def add_total(self, name: str, amount: Decimal) -> None:
        """Add ``amount`` to the money total ``name``."""
        self.totals[name] = self.totals.get(name, Decimal(0)) + amount

    def finish(self) -> ImportSummary:
        """Sort the skipped lines by line number; return ``self``."""
        self.skipped.sort(key=lambda s: s.line)
        return self

    # -- reading -----------------------------------------------------------------------------------
    @property
    def imported_lines(self) -> int:
        """Lines that ended as something imported."""
        return sum(self.outcomes.values())

    @property
    def skipped_lines(self) -> int:
        """Lines that were skipped."""
        return len(self.skipped)

    @property
    def accounted(self) -> bool:
        """True when every data line has exactly one outcome."""
        return self.imported_lines + self.skipped_lines == self.lines

    def skipped_by_code(self) -> Counter[str]:
        """How many lines were skipped per reason code."""
        return Counter(s.code for s in self.skipped)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (decimals as strings)."""
        return {
            "kind": self.kind,
            "source": self.source,
            "lines": self.lines,
            "imported": self.imported_lines,
            "outcomes": dict(self.outcomes),
            "skipped": self.skipped_lines,
            "skipped_by_code": dict(self.skipped_by_code()),
            "warnings": len(self.warnings),
            "records": dict(self.records),
            "totals": {k: str(v) for k, v in self.totals.items()},
            "elapsed_s": round(self.elapsed_s, 2),
        }

    def render(self, *, examples: int = 3) -> str:
        """A human-readable report: outcomes, records, totals, skip reasons with example lines, rules."""
        out = [f"Import of {self.kind} from {self.source or '-'}: {self.lines} data lines in {self.elapsed_s:.1f} s"]
        out.append(f"  imported lines: {self.imported_lines}")
        for name, n in sorted(self.outcomes.items()):
            out.append(f"    {name:<28} {n:>8}")
        out.append(f"  skipped lines:  {self.skipped_lines}")
        by_code = self.skipped_by_code()
        for code, n in by_code.most_common():
            out.append(f"    {code:<28} {n:>8}")
            for sample in [s for s in self.skipped if s.code == code][:examples]:
                out.append(f"      line {sample.line}: {sample.reason}")
        if self.records:
            out.append("  records:")
            for name, n in sorted(self.records.items()):
                out.append(f"    {name:<28} {n:>8}")
        if self.warnings:
            out.append(f"  warnings: {len(self.warnings)}")
            for sample in self.warnings[: examples * 3]:
                out.append(f"    line {sample.line}: {sample.reason}")
        if self.totals:
            out.append("  totals:")
            for name, amount in sorted(self.totals.items()):
                out.append(f"    {name:<28} {amount:>14}")
        if not self.accounted:
            out.append(
                f"  WARNING: {self.imported_lines} imported + {self.skipped_lines} skipped != {self.lines} lines"
            )
        if self.rules:
            out.append("  rules applied:")
            out.extend(f"    - {rule}" for rule in self.rules)
        return "\n".join(out)
