"""A study's ``report.md``: what the paper reports, what was measured, whether they agree.

``Report`` collects Markdown blocks, the headline checks (paper value, measured value, the
tolerance, agreement) and the figures, and writes them beside each other in one folder. The
palette is Okabe & Ito's, which colour-blind readers tell apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
             "#000000")  # fmt: skip


@dataclass(frozen=True)
class Check:
    """One headline comparison with the paper."""

    quantity: str
    paper: str  # the published value, as the paper states it
    measured: float
    tolerance: str  # in words, e.g. "|ln(measured/paper)| ≤ 0.4"
    agrees: bool | None  # None: not comparable (the report says why)
    shown: str = ""  # how to print ``measured`` (default: 3 significant digits)

    def __post_init__(self) -> None:  # a NumPy bool from a comparison counts as a bool
        if self.agrees is not None:
            object.__setattr__(self, "agrees", bool(self.agrees))

    @property
    def verdict(self) -> str:
        return {True: "✅ agrees", False: "❌ does not agree", None: "– not comparable"}[
            self.agrees
        ]


@dataclass
class Report:
    """A report under construction; ``write(folder)`` saves report.md and its figures."""

    title: str
    blocks: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)

    def text(self, markdown: str) -> None:
        self.blocks.append(markdown.strip())

    def check(self, check: Check) -> None:
        self.checks.append(check)

    def figure(self, name: str, fig: Figure, caption: str) -> None:
        """``fig`` saved as ``name`` (a .png) and shown here with its caption."""
        self.figures[name] = fig
        self.blocks.append(f"![{caption}]({name})\n\n*{caption}*")

    def table(self, rows: list[dict], caption: str = "") -> None:
        self.blocks.append((f"{caption}\n\n" if caption else "") + markdown_table(rows))

    def headline(self) -> str:
        rows = [{"quantity": c.quantity, "paper": c.paper,
                 "measured": c.shown or fmt(c.measured), "tolerance": c.tolerance,
                 "": c.verdict} for c in self.checks]  # fmt: skip
        return markdown_table(rows)

    def markdown(self, intro: str) -> str:
        parts = [f"# {self.title}", intro.strip(), "## Headline", self.headline(), *self.blocks]
        return "\n\n".join(parts) + "\n"

    def write(self, folder: Path, intro: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, fig in self.figures.items():
            fig.savefig(folder / name, dpi=110, bbox_inches="tight")
        path = folder / "report.md"
        path.write_text(self.markdown(intro), encoding="utf-8")
        return path


def fmt(value: float | None, digits: int = 3) -> str:
    """A number as people read it: 3 significant digits, – for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def markdown_table(rows: list[dict]) -> str:
    """A GitHub Markdown table of ``rows`` (dicts with the same keys); numbers right-aligned."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])

    def cell(v: object) -> str:
        return fmt(v) if isinstance(v, float) else str(v).replace("|", "\\|")

    numeric = [all(isinstance(r[k], int | float) for r in rows) for k in keys]
    lines = ["| " + " | ".join(keys) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]  # fmt: skip
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def within_log(measured: float, expected: float, tol: float) -> bool | None:
    """|ln(measured/expected)| ≤ tol (None where either is not a positive number)."""
    if not (measured > 0 and expected > 0):
        return None
    return abs(math.log(measured / expected)) <= tol
