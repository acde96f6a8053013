"""Tables across runs: which runs are comparable, mean ± std over seeds, verdict counts."""

from __future__ import annotations

import pandas as pd

from bpdiag.sweep.config import RUN_FIELDS

# Axes in the order a person reads a sweep: architecture first, then training.
AXIS_ORDER = ("depth", "activation", "init", "norm", "residual", "residual_scale", "width",
              "optimizer", "clip", "clip_value", "lr", "batch_size", "dataset", "dtype",
              "steps")  # fmt: skip


def varying_axes(df: pd.DataFrame) -> list[str]:
    """RunConfig fields (not seed) that take more than one value in ``df``."""
    fields = [f for f in AXIS_ORDER if f in df] + [f for f in RUN_FIELDS if f not in AXIS_ORDER]
    return [f for f in fields if f in df and f != "seed" and df[f].map(str).nunique() > 1]


_SHORT = {"depth": "d{}", "width": "w{}", "lr": "lr {}", "batch_size": "batch {}",
          "steps": "{} steps", "clip_value": "clip {}", "residual_scale": "skip×{}"}  # fmt: skip
_PART_OF = {"clip_value": "clip", "residual_scale": "residual"}  # shown within that axis


def run_names(configs: list) -> dict[str, str]:
    """run_key → a name that leads with what varies across ``configs`` (RunConfigs) and ends
    with the seed: 'sigmoid · d30 · xavier_normal · s0' (the full name where nothing varies)."""
    if not configs:
        return {}
    df = pd.DataFrame([cfg.model_dump() for cfg in configs])
    axes = varying_axes(df)
    # the clip's part names its value, the skip's its scale
    axes = [a for a in axes if _PART_OF.get(a) not in axes]
    quiet = len(axes) > 3  # many axes (grids mixed): leave out "no norm", "no skip", "no clip"
    names = {}
    for cfg in configs:
        parts = [_short(cfg, axis) for axis in axes]
        parts = [p for p in parts if p and not (quiet and p.startswith("no "))]
        names[cfg.run_key] = " · ".join(parts + [f"s{cfg.seed}"]) if parts else cfg.name
    return names


def _short(cfg, axis: str) -> str:
    """One axis of ``cfg`` in a few characters ('' where it means nothing for this run)."""
    value = getattr(cfg, axis)
    if axis == "clip":
        return "no clip" if value == "none" else f"clip {value} {cfg.clip_value}"
    if axis == "residual":
        scale = "" if cfg.residual_scale == 1.0 else f"×{cfg.residual_scale}"
        return f"skip{scale}" if value else "no skip"
    if axis == "norm" and value == "none":
        return "no norm"
    if (axis == "clip_value" and cfg.clip == "none") or (
        axis == "residual_scale" and not cfg.residual
    ):
        return ""
    return _SHORT.get(axis, "{}").format(value)


def comparable(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The largest set of runs that differ only in ``axes`` (and seed).

    A sweep of several grids mixes runs; e.g. the optimizer × clipping comparison must not
    average in the depth study's runs.
    """
    others = [f for f in RUN_FIELDS if f in df and f not in axes and f != "seed"]
    if not others:
        return df
    keys = df[others].map(str).agg("|".join, axis=1)
    combos = df.groupby(keys)[axes].apply(lambda g: len(g.drop_duplicates()))
    return df[keys == combos.idxmax()]


def aggregate(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Per group of ``by``: n runs, mean and std of ``metric`` over seeds, verdict counts."""
    missing = [c for c in [*by, metric] if c not in df]
    if missing:
        allowed = sorted(c for c in df.columns if not c.startswith("tags."))
        raise ValueError(f"unknown column(s) {missing}; available: {', '.join(allowed)}")
    groups = df.groupby(by, dropna=False)
    table = groups[metric].agg(n="count", mean="mean", std="std")
    if "label" in df:
        counts = pd.crosstab([df[c] for c in by], df["label"])
        table = table.join(counts).fillna({c: 0 for c in counts.columns})  # mean stays NaN
    return table.reset_index()


def majority(labels: pd.Series) -> tuple[str, int, int]:
    """(most common label, its count, total)."""
    counts = labels.value_counts()
    return str(counts.index[0]), int(counts.iloc[0]), int(counts.sum())
