"""The descriptions MLflow shows (``mlflow.note.content``, Markdown): an experiment's says what
its sweep varies and how to read it, a parent's sums up its children, a child's says why it got
its verdict. Links are relative to the UI (any host and port) and keep the model-training view.
"""

from __future__ import annotations

import math

import pandas as pd

from bpdiag.diagnostics.verdict import Thresholds
from bpdiag.schema import LOG10_OF_ZERO, SUMMARY, log10
from bpdiag.sweep.compare import varying_axes

NOTE = "mlflow.note.content"
VERDICT_LOG10_KEY = next(s for s in SUMMARY if s.name == "delta_ratio_median").log10_key


def _reading(th: Thresholds) -> str:
    lo, hi = log10(th.vanishing_ratio), log10(th.exploding_ratio)
    return (f"The verdict reads **`{VERDICT_LOG10_KEY}`**: log10 of the median over training of "
            f"RMS‖δ₁‖ / RMS‖δ_L‖, the error signal at the first layer over that at the last. "
            f"Below {lo:g} is *vanishing*, above {hi:g} *exploding* (after the checks for "
            f"diverged, dead and saturated nets).")  # fmt: skip


def experiment_note(spec, runs: list, th: Thresholds | None = None) -> str:
    """What the sweep ``spec`` (a SweepSpec) expands to (``runs``: its RunConfigs)."""
    df = pd.DataFrame([cfg.model_dump() for cfg in runs])
    axes = varying_axes(df)
    lines = [f"**Sweep `{spec.name}`**: {len(runs)} runs."]
    if spec.description:
        lines += ["", spec.description.strip()]
    lines += ["", "What varies:"]
    lines += [f"- `{a}`: {', '.join(map(str, pd.unique(df[a].dropna())))}" for a in axes]
    lines += [f"- `seed`: {', '.join(map(str, spec.seeds))}", ""]
    lines += [
        "Each invocation of the sweep is a parent run; expand it for one child per configuration, "
        "named `[verdict] what varies · seed`. " + _reading(th or Thresholds()),
        "",
        "A child's charts, in MLflow's order: `batch/…` (loss, accuracy, gradient norm) over "
        "training steps; `depth/log10_delta/0_init` … `/3_end` with the **layer index as "
        "step** (the error signal across depth at init, ¼, ½ and the end of training); "
        "`instruments/…`, the per-sample gradient noise scale `B_simple` and SNR (and the "
        "sharpness, where measured) over steps; `layer/…`, a few layers' series over steps; "
        "then `summary/…`, one number each.",
    ]
    return "\n".join(lines)


def child_note(result, th: Thresholds | None = None) -> str:
    """A child's verdict, the number behind it and its evidence (``result``: a RunResult)."""
    if result.status != "FINISHED":
        last = (result.error or "").strip().splitlines()[-1:] or ["unknown error"]
        return f"**failed**: `{last[0]}` (the whole traceback is in `error.txt`)"
    ratio = result.evidence.get("delta_ratio_median", math.nan)
    lines = [
        f"**{result.label}**: {result.reason}.",
        "",
        f"Timeline: {result.headline}."
        + "".join(f" Flag **{name}**: {text}." for name, text in result.flags.items()),
        "",
        f"`{VERDICT_LOG10_KEY}` = {_fmt_log10(ratio)}. " + _reading(th or Thresholds()),
        "",
        "| evidence | value |",
        "| --- | ---: |",
    ]
    by_name = {s.name: s for s in SUMMARY}
    for name, value in result.evidence.items():
        lines.append(f"| `{by_name[name].key}` | {_fmt(value)} |")
    measured = [(s, result.summary.get(s.name, math.nan)) for s in SUMMARY
                if s.group == "instruments"]  # fmt: skip
    measured = [(s, v) for s, v in measured if math.isfinite(v)]
    if measured:
        lines += ["", "| instrument | value |", "| --- | ---: |"]
        lines += [f"| `{s.key}` | {_fmt(v)} |" for s, v in measured]
    lines += ["", "Figures: `gradient_flow.png`, `instruments.png` (noise scale per layer, "
              "sharpness against 2/lr, the Jacobian's spectrum at init); each layer at init, ¼, "
              "½ and the end: `depth_profile.csv`; every record of every layer: "
              "`layers.parquet`."]  # fmt: skip
    return "\n".join(lines)


def parent_note(table: pd.DataFrame, paths: dict[str, str], figures: list[str],
                parent_id: str) -> str:  # fmt: skip
    """A sweep invocation's summary: verdict counts, its figures (artifacts of ``parent_id``)
    and links to the runs furthest from healthy (``paths``: run_id → UI path)."""
    if table is None or table.empty:
        return "No run finished."
    counts = table["label"].value_counts()
    lines = [f"**{len(table)} runs**: " + ", ".join(f"{n} {k}" for k, n in counts.items()), ""]
    for name in figures:
        lines += [f"![{name}](get-artifact?path={name}&run_uuid={parent_id})", ""]
    ratio = table.get("delta_ratio_median", pd.Series(math.nan, index=table.index))
    spread = ratio.map(lambda r: math.inf if r == 0 else abs(log10(r)) if r > 0 else -1.0)
    worst = table.assign(_spread=spread).sort_values("_spread", ascending=False).head(5)
    if len(worst):
        lines += [f"Furthest from healthy (by `{VERDICT_LOG10_KEY}`):", ""]
        for _, row in worst.iterrows():
            where = paths.get(row["run_id"])
            name = row.get("name") or row["run_id"]
            shown = f"[{name}]({where})" if where else name
            lines.append(f"- {shown}: {_fmt_log10(row['delta_ratio_median'])}")
    lines += ["", "Every child in one table: `summary.csv` (with each run's address)."]
    return "\n".join(lines)


def _fmt_log10(ratio: float) -> str:
    if ratio == 0:
        return f"−∞ (the ratio is exactly 0; logged as {LOG10_OF_ZERO:g})"
    return _fmt(log10(ratio))


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–" if value is None or math.isnan(value) else str(value)
    return f"{value:.3g}"
