"""Normalization and skip connections against depth: BatchNorm's own explosion at init (Yang et
al. 2019), its removal by a scaled skip, and which cure trains at which depth.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bpdiag.diagnostics.theory import batchnorm_gradient_rate
from bpdiag.studies.report import OKABE_ITO, Check, Report, fmt, markdown_table, within_log
from bpdiag.studies.store import StudyData, at, geomean

TITLE = "Normalization and skips: BatchNorm's gradient explosion at init, and what trains how deep"
SPECS = ("normalization.yaml",)
INTRO = """
G. Yang, J. Pennington, V. Rao, J. Sohl-Dickstein, S. S. Schoenholz, *A Mean Field Theory of
Batch Normalization*, ICLR 2019 ([arXiv:1902.08129](https://arxiv.org/abs/1902.08129)): in a
deep fully connected net with BatchNorm and no skip connections the gradient explodes with
depth at init, whatever σ_w, by a factor λ_G per layer in E‖δ‖² (Thm 3.10; for ReLU at batch B
a closed form that tends to π/(π−1) ≈ 1.47). G. Yang, S. S. Schoenholz, *Mean Field Residual
Networks: On the Edge of Chaos*, NeurIPS 2017 ([arXiv:1712.08969](https://arxiv.org/abs/1712.08969)):
with skips, signals change polynomially, not exponentially, in depth; a branch scaled by
1/√L keeps them bounded. Here: ReLU nets of width 64 on spirals from xavier_normal (which
makes a plain ReLU net's gradient vanish by 2^(−1/2) per layer), depth 10, 30 and 100, with
no normalization, BatchNorm or LayerNorm, each without and with a skip connection around every
hidden layer (branch scaled by 1/√L), plain SGD at lr 0.01 and batch 64, two seeds.
"""
CURES = [(n, r) for r in (False, True) for n in ("none", "batchnorm", "layernorm")]
COLORS = {n: c for n, c in zip(("none", "batchnorm", "layernorm"), OKABE_ITO, strict=False)}
TRAINED = 0.5 * math.log(2)  # final training loss below half of chance's


def _cure(norm: str, residual: bool) -> str:
    return f"{norm} + skip" if residual else norm


def build(data: StudyData, report: Report) -> str:
    table = data.table("normalization")
    table["residual"] = table["residual"].astype(bool)
    table["cure"] = [_cure(n, r) for n, r in zip(table["norm"], table["residual"], strict=True)]
    depth = int(table["depth"].max())
    batch = int(table["batch_size"].iloc[0])
    init = {r.run_id: at(data.profile(r.run_id), "0_init") for r in table.itertuples()}
    table["growth"] = [_growth(init[r]) for r in table["run_id"]]

    rate = math.sqrt(batchnorm_gradient_rate("relu", batch))  # of RMS δ, per layer
    deep = table[table["depth"] == depth]
    bn = deep[(deep["norm"] == "batchnorm") & ~deep["residual"]]
    measured = geomean(bn["growth"])
    tol = 0.05
    report.check(Check(f"BatchNorm, no skip, depth {depth}: growth of RMS‖δ_l‖ per layer toward "
                       f"the input at init (geometric mean over seeds)",
                       f"√λ_G = {rate:.4f} (B = {batch}; Yang et al. 2019, Thm 3.10)", measured,
                       f"|ln(measured/paper)| ≤ {tol}", within_log(measured, rate, tol),
                       fmt(measured, 4)))  # fmt: skip
    shallow = int(table["depth"].min())

    def first_last(norm: str, residual: bool, d: int) -> float:
        rows = table[(table["norm"] == norm) & (table["residual"] == residual)
                     & (table["depth"] == d)]  # fmt: skip
        return geomean(rows["grad_ratio_first_last"])

    ratio = first_last("batchnorm", True, depth) / first_last("batchnorm", True, shallow)
    plain = first_last("batchnorm", False, depth) / first_last("batchnorm", False, shallow)
    report.check(Check(f"BatchNorm + skip (branch × 1/√L): RMS δ_1 / δ_L at init, depth {depth} "
                       f"over depth {shallow} (without the skip: {fmt(plain)})",
                       "bounded in depth: no exponential growth (Yang & Schoenholz 2017)",
                       ratio, f"≤ 10 over a {depth // shallow}× deeper net",
                       ratio <= 10 if math.isfinite(ratio) else None))  # fmt: skip
    trains = _trains(table)
    cured = trains.loc[depth].drop(labels=["none"], errors="ignore")
    report.check(Check(f"depth {depth}: cures whose every seed trains (final loss < ½ ln 2)",
                       "the skip and normalization cure vanishing gradients (the seed text)",
                       float(cured.sum()), "at least one", bool(cured.any()),
                       ", ".join(cured.index[cured]) or "none"))  # fmt: skip

    report.figure("normalization.png", _profiles_figure(table, init, depth, rate),
                  f"RMS error signal per layer at init, depth {depth}, seed 0, for each cure "
                  f"(solid: no skip; dashed: with the skip). BatchNorm without a skip grows "
                  f"it toward the input by about √λ_G = {rate:.3f} per layer (grey: Yang et "
                  f"al.'s rate); the skip removes the growth; the plain net's signal vanishes.")  # fmt: skip
    report.figure("normalization_trains.png", _trains_figure(table),
                  "Final training loss (median over seeds, log scale) per depth and cure; "
                  "a cell is outlined where every seed fell below ½ ln 2.")  # fmt: skip

    rows = []
    for (d, cure), g in table.groupby(["depth", "cure"], sort=True):
        rows.append({"depth": int(d), "cure": cure,
                     "growth of δ per layer at init": float(geomean(g["growth"])),
                     "δ_1/δ_L at init": float(geomean(g["grad_ratio_first_last"])),
                     "final loss (median)": float(g["final_loss"].median()),
                     "test accuracy (median)": float(g["test_accuracy"].median()),
                     "verdicts": ", ".join(sorted(g["label"].astype(str)))})  # fmt: skip
    report.text(f"""## Results

Per depth and cure (two seeds; the growth is the geometric-mean factor of RMS‖δ_l‖ per layer
from the output toward the input at init, above 1 where the signal grows):

{markdown_table(rows)}

Yang et al.'s rate is for the batch statistics of B = {batch} samples; bpdiag's BatchNorm uses
the batch statistics in training as PyTorch's `BatchNorm1d` does. LayerNorm normalizes each
sample over its features, so it has no batch coupling and no such explosion.""")
    return (f"BatchNorm without skips makes the gradient of a {depth}-layer ReLU net grow "
            f"{fmt(measured, 3)}× per layer toward the input at init (Yang et al. predict "
            f"{rate:.3f}×); a skip scaled by 1/√L keeps δ_1/δ_L level from {shallow} to {depth} "
            f"layers ({fmt(ratio, 2)}× against {fmt(plain, 2)}× without it), and at "
            f"depth {depth} {', '.join(cured.index[cured]) or 'no cure'} train.")  # fmt: skip


def _growth(profile: pd.DataFrame) -> float:
    """Geometric-mean factor of RMS‖δ_l‖ per layer from the last hidden layer to the first."""
    delta = profile["delta_rms"].iloc[:-1]  # hidden layers (the output layer has no norm)
    if len(delta) < 2 or not (delta > 0).all():
        return math.nan
    return float(np.exp(np.log(delta.iloc[0] / delta.iloc[-1]) / (len(delta) - 1)))


def _trains(table: pd.DataFrame) -> pd.DataFrame:
    """depth × cure: True where every seed's final loss is below ½ ln 2."""
    ok = table.assign(ok=table["final_loss"] < TRAINED)
    return ok.groupby(["depth", "cure"])["ok"].all().unstack("cure")


def _profiles_figure(table, init, depth, rate) -> Figure:
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    deep = table[(table["depth"] == depth) & (table["seed"] == table["seed"].min())]
    for norm, residual in CURES:
        runs = deep[(deep["norm"] == norm) & (deep["residual"] == residual)]
        if runs.empty:
            continue
        p = init[runs["run_id"].iloc[0]]
        ax.plot(p.index, p["delta_rms"], "--" if residual else "-", color=COLORS[norm],
                lw=1.4, label=_cure(norm, residual))  # fmt: skip
        if norm == "batchnorm" and not residual:
            top = float(p["delta_rms"].iloc[-2])
            layers = np.arange(1, depth)
            ax.plot(layers, top * rate ** (depth - 1 - layers), color="0.5", lw=3, alpha=0.4,
                    label=f"√λ_G = {rate:.3f} per layer")  # fmt: skip
    ax.set(yscale="log", xlabel="layer l (1 = input side)", ylabel="RMS ‖δ_l‖ at init",
           title=f"error signal across depth at init, {depth} layers")  # fmt: skip
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.legend(fontsize=8)
    return fig


def _trains_figure(table) -> Figure:
    cures = [
        _cure(n, r) for n, r in CURES if ((table["norm"] == n) & (table["residual"] == r)).any()
    ]
    depths = sorted(table["depth"].unique())
    loss = table.groupby(["depth", "cure"])["final_loss"].median().unstack("cure")
    loss = loss.reindex(index=depths, columns=cures)
    ok = _trains(table).reindex(index=depths, columns=cures)
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax = fig.subplots()
    values = np.log10(loss.to_numpy(dtype=float))
    mesh = ax.imshow(values, cmap="viridis_r", aspect="auto", vmin=-5, vmax=0)
    for i in range(len(depths)):
        for j in range(len(cures)):
            v = loss.iloc[i, j]
            ax.text(j, i, "diverged" if not np.isfinite(v) else f"{v:.2g}", ha="center",
                    va="center", fontsize=8, color="white" if np.isfinite(v) and v > 0.01 else "k")  # fmt: skip
            if isinstance(ok.iloc[i, j], bool | np.bool_) and ok.iloc[i, j]:
                ax.add_patch(_outline(j, i))
    ax.set_xticks(range(len(cures)), [c.replace(" + ", "\n+ ") for c in cures])
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set(xlabel="cure", ylabel="depth (layers)", title="final training loss (median over seeds)")
    fig.colorbar(mesh, ax=ax, label="log10 final loss (BCE, nats)")
    return fig


def _outline(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="#D55E00", lw=2.5)
