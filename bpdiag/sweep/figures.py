"""Figures across the runs of a sweep: the verdict grid, loss curves, bars of a metric."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bpdiag.choices.activations import ACTIVATIONS
from bpdiag.choices.clipping import CLIPPING
from bpdiag.choices.norms import NORMS
from bpdiag.choices.optim import OPTIMIZERS
from bpdiag.diagnostics.figures import LABEL_COLORS
from bpdiag.sweep.compare import comparable, majority, varying_axes


def verdict_grid(
    df, rows: str | None = None, cols: str | None = None, facet: str | None = None
) -> Figure:
    """A grid of verdicts: ``rows`` × ``cols`` cells, one panel per value of ``facet``.

    df: one row per run with the RunConfig fields and ``label``. Axes default to the sweep's
    varying axes (depth × activation, faceted by init, when those vary); each cell shows the
    majority verdict over seeds (and "k/n" when they disagree).
    """
    if cols is None:
        found = varying_axes(df)[:3] or ["seed"]
        cols, rows, facet = (found + [None, None])[:3]
    df = comparable(df, [a for a in (rows, cols, facet) if a])
    facet_values = _sorted(df[facet]) if facet else [None]
    col_values = _sorted(df[cols])
    row_values = _sorted(df[rows]) if rows else [None]
    fig = Figure(figsize=(1.2 + 1.5 * len(col_values) * len(facet_values), 1.2 + 0.55 * len(row_values) + 0.6),
                 layout="constrained")  # fmt: skip
    axs = fig.subplots(1, len(facet_values), squeeze=False)[0]
    for ax, fv in zip(axs, facet_values, strict=True):
        sub = df if facet is None else df[df[facet].map(str) == str(fv)]
        for i, rv in enumerate(row_values):
            for j, cv in enumerate(col_values):
                cell = sub[sub[cols].map(str) == str(cv)]
                if rows:
                    cell = cell[cell[rows].map(str) == str(rv)]
                if cell.empty:
                    continue
                label, k, n = majority(cell["label"])
                ax.add_patch(_rect(j, i, LABEL_COLORS.get(label, "white")))
                text = label if k == n else f"{label}\n{k}/{n}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color="white")
        ax.set_xlim(-0.5, len(col_values) - 0.5)
        ax.set_ylim(len(row_values) - 0.5, -0.5)
        ax.set_xticks(range(len(col_values)), [str(v) for v in col_values], fontsize=8)
        ax.set_yticks(range(len(row_values)), [str(v) for v in row_values], fontsize=8)
        ax.set_xlabel(cols)
        if rows:
            ax.set_ylabel(rows)
        ax.set_title(f"{facet} = {fv}" if facet else "", fontsize=9)
    fig.suptitle("verdict per configuration (majority over seeds)")
    return fig


def _rect(x: float, y: float, color: str) -> Rectangle:
    return Rectangle((x - 0.48, y - 0.46), 0.96, 0.92, color=color)


def _sorted(values) -> list:
    """Distinct values in reading order: registry order for names (none, norm, agc, ...)."""
    unique = list(dict.fromkeys(values.tolist()))
    known = {name: i for i, name in enumerate(dict.fromkeys([*CLIPPING, *NORMS, *OPTIMIZERS,
                                                             *ACTIVATIONS]))}  # fmt: skip
    if all(isinstance(v, str) and v in known for v in unique):
        return sorted(unique, key=known.__getitem__)
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=str)


def loss_curves(df, histories: dict, by: tuple[str, str] = ("optimizer", "clip"),
                together: tuple[str, ...] = ()) -> Figure:  # fmt: skip
    """Training loss against step: one panel per value of by[1], one line per value of by[0],
    the mean over seeds with a band from the lowest to the highest seed.

    df: one row per run (RunConfig fields, ``run_id``); histories: run_id → (step, loss) table;
    ``together``: fields that vary with ``by`` (a skip's residual_scale goes with residual).
    """
    line_axis, panel_axis = by
    df = comparable(df, [*by, *together])
    starts = [h["loss"].iloc[0] for r, h in histories.items() if len(h)]
    top = 10 * max(
        [s for s in starts if np.isfinite(s)], default=10.0
    )  # diverged runs leave the top
    panels = _sorted(df[panel_axis])
    fig = Figure(figsize=(4.2 * len(panels), 3.8), layout="constrained")
    axs = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, pv in zip(axs, panels, strict=True):
        sub = df[df[panel_axis].map(str) == str(pv)]
        for i, lv in enumerate(_sorted(sub[line_axis])):
            runs = sub[sub[line_axis].map(str) == str(lv)]
            series = [histories[r].set_index("step")["loss"].where(lambda x: np.isfinite(x) & (x < 1e300))
                      for r in runs["run_id"] if r in histories and len(histories[r])]  # fmt: skip
            if not series:
                continue
            table = pd.concat(series, axis=1).sort_index()
            diverged = int((runs["label"] == "diverged").sum()) if "label" in runs else 0
            note = f"{len(series)} runs" + (f", {diverged} diverged ↑" if diverged else "")
            ax.plot(table.index, table.mean(axis=1), color=f"C{i}", label=f"{lv} ({note})")
            ax.fill_between(
                table.index, table.min(axis=1), table.max(axis=1), color=f"C{i}", alpha=0.2
            )
        ax.set_yscale("log")
        ax.set_ylim(top=top)
        ax.set_xlabel("step")
        ax.set_title(f"{panel_axis} = {pv}")
        ax.grid(True, alpha=0.3)
        ax.legend(title=line_axis, fontsize=8)
    axs[0].set_ylabel("training loss (minibatch)")
    fig.suptitle(f"loss by {line_axis} × {panel_axis}: mean over seeds, band = min–max")
    return fig


def metric_bars(table, by: list[str], metric: str) -> Figure:
    """Bars of a metric's mean ± std per group (the ``aggregate`` table); a group's diverged
    runs, which have no end-of-training numbers, are counted in its label, not averaged."""
    fig = Figure(figsize=(max(4.0, 0.6 * len(table) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    diverged = table["diverged"] if "diverged" in table else pd.Series(0, index=table.index)
    labels = [" / ".join(str(row[a]) for a in by) + (f" ({n} diverged)" if n else "")
              for (_, row), n in zip(table.iterrows(), diverged.astype(int), strict=True)]  # fmt: skip
    ax.bar(range(len(table)), table["mean"], yerr=table["std"].fillna(0), color="C0", capsize=3)
    ax.set_xticks(range(len(table)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"{metric} by {' / '.join(by)}")
    return fig
