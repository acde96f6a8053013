"""Optimizers on a net where plain SGD stalls: steps to a target loss and per-layer updates.

A 30-layer ReLU net from Xavier's init, whose gradients are ~2^(−29/2) of a healthy net's,
trained with each optimizer. SGD's steps scale with the gradient and stall; Adam's are about
lr per parameter whatever the gradient's scale (Kingma & Ba 2015, §2.1), so its relative
updates ‖ΔW_l‖/‖W_l‖ are level across layers and far larger.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bpdiag.studies.report import OKABE_ITO, Check, Report, fmt, markdown_table
from bpdiag.studies.store import StudyData, at, first_step_below, layer_shapes, per_weight

TITLE = "Optimizers where plain SGD stalls: sgd, momentum, nesterov, rmsprop, adam, adamw"
SPECS = ("optimizers.yaml",)
INTRO = """
He et al. 2015 ([arXiv:1502.01852](https://arxiv.org/abs/1502.01852)) showed a 30-layer ReLU
net from Xavier's init stalling under SGD: its gradients shrink by 2^(−1/2) per layer. Here the
same net (width 64, spirals) is trained with each of bpdiag's optimizers, three seeds each:
SGD, SGD with momentum and with Nesterov momentum (μ = 0.9; I. Sutskever, J. Martens, G. Dahl,
G. Hinton, ICML 2013) at lr 0.01, and RMSprop (Hinton's lecture 6e), Adam (D. P. Kingma,
J. Ba, ICLR 2015, [arXiv:1412.6980](https://arxiv.org/abs/1412.6980)) and AdamW
(I. Loshchilov, F. Hutter, ICLR 2019) at lr 0.001. Kingma & Ba §2.1: Adam's effective step
per parameter is approximately bounded by the step size α, |Δθ| ≲ α, whatever the gradient's
scale. The target loss is half of chance's: ½ ln 2 ≈ 0.347.
"""
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")
COLORS = dict(zip(OPTIMIZERS, OKABE_ITO, strict=False))
TARGET = 0.5 * math.log(2)
ADAPTIVE = ("rmsprop", "adam", "adamw")


def build(data: StudyData, report: Report) -> str:
    table = data.table("optimizers")
    table["order"] = table["optimizer"].map({o: i for i, o in enumerate(OPTIMIZERS)})
    table = table.sort_values(["order", "seed"], ignore_index=True)
    losses = {r.run_id: data.series(r.run_id, "loss") for r in table.itertuples()}
    table["steps_to_target"] = [first_step_below(losses[r], TARGET) for r in table["run_id"]]
    init = {r.run_id: at(data.profile(r.run_id), "0_init") for r in table.itertuples()}
    quarter = {r.run_id: at(data.profile(r.run_id), "1_quarter") for r in table.itertuples()}
    shapes = layer_shapes(table.iloc[0])
    table["rms_step"] = [_rms_step(quarter[r], shapes).max() for r in table["run_id"]]

    sgd = table[table["optimizer"] == "sgd"]
    stalled = int(sgd["steps_to_target"].isna().sum())
    report.check(Check("sgd: seeds that never reach the target", "stalls (He et al. 2015)",
                       stalled, "all seeds", len(sgd) > 0 and stalled == len(sgd),
                       f"{stalled} of {len(sgd)}"))  # fmt: skip
    adam = table[table["optimizer"] == "adam"]
    if len(adam):
        ratio = float((adam["rms_step"] / adam["lr"]).max())
        report.check(Check("adam: largest RMS step per weight of any layer ÷ lr, at ¼ of "
                           "training (worst seed)", "≲ 1 (|Δθ| ≲ α, Kingma & Ba §2.1)", ratio,
                           "≤ 1.1", ratio <= 1.1))  # fmt: skip
    adaptive = table[table["optimizer"].isin(ADAPTIVE)]
    reached = int(adaptive["steps_to_target"].notna().sum())
    report.check(Check("rmsprop, adam, adamw: seeds that reach the target",
                       "train (their steps ignore the gradient's scale)", reached, "all seeds",
                       len(adaptive) > 0 and reached == len(adaptive),
                       f"{reached} of {len(adaptive)}"))  # fmt: skip

    report.figure("optimizers.png", _figure(table, losses, init, quarter),
                  "Left: training loss per optimizer, one line per seed (dotted: the target "
                  "½ ln 2). Middle and right: relative update ‖ΔW_l‖/‖W_l‖ per layer (seed 0) "
                  "of the first step and at ¼ of training. The first steps of SGD and its "
                  "momentum variants are 1e-9 of the weights, the adaptive optimizers' 1e-3, "
                  "level across depth (SGD's first step is momentum's, hidden beneath it, and "
                  "Adam's is AdamW's). A layer without a point has an update of exactly 0: "
                  "plain SGD's net has a dead layer by then, below which the gradient is 0.")  # fmt: skip
    rows = []
    for o, g in table.groupby("optimizer", sort=False):
        steps = g["steps_to_target"].dropna()
        first = [float(init[r]["update_ratio"].median()) for r in g["run_id"]]
        ratios = [float(quarter[r]["update_ratio"].median()) for r in g["run_id"]]
        rows.append({"optimizer": o, "lr": float(g["lr"].iloc[0]), "runs": len(g),
                     "reached target": len(steps), "ended dead": int((g["label"] == "dead").sum()),
                     "median steps to target": int(steps.median()) if len(steps) else "never",
                     "final loss (median)": float(g["final_loss"].median()),
                     "test accuracy (median)": float(g["test_accuracy"].median()),
                     "‖ΔW‖/‖W‖ first step": float(np.median(first)),
                     "‖ΔW‖/‖W‖ at ¼": float(np.median(ratios)),
                     "max RMS step / lr": float((g["rms_step"] / g["lr"]).max())})  # fmt: skip
    report.text(f"""## Results

Per optimizer (three seeds; the update ratios are medians over layers and seeds, of the first
step and at ¼ of training, where 0 means a dead layer stopped the gradient; the RMS step is ‖ΔW_l‖/√(n_in·n_out) of the layer with the largest):

{markdown_table(rows)}

**Reading it.** SGD, momentum and Nesterov multiply the gradient by the learning rate, so the
gradient's scale (about 2^(−29/2) ≈ 4e-5 of a healthy net's at the input) sets the step: their
first relative updates are about 1e-9, and momentum's 1/(1 − μ) = 10× does not change that.
RMSprop, Adam and AdamW divide by a running RMS of the gradient, which cancels its scale:
their first relative updates are about 1e-3, level across depth, and most of their runs pass
the target. But steps that large, in every layer at once, also kill ReLU units: "ended dead"
counts the runs whose verdict at the end is *dead* (most hidden units inactive on every
sample), which then sit at chance. Neither family trains this net reliably at these learning
rates; He's init does (see [he2015](../he2015/report.md)).""")
    timed = [r for r in rows if r["median steps to target"] != "never"]
    fastest = (min(timed, key=lambda r: r["median steps to target"])["optimizer"]
               if timed else "none")  # fmt: skip
    dead = int((adaptive["label"] == "dead").sum())
    return (
        f"On a 30-layer ReLU net from Xavier's init, SGD and its momentum variants take "
        f"first steps of about 1e-9 of the weights and never reach the target; RMSprop, "
        f"Adam and AdamW step about 1e-3 in every layer and reach it in {reached} of "
        f"{len(adaptive)} runs ({fastest} fastest), but {dead} of those {len(adaptive)} end "
        f"with most ReLU units dead."
    )


def _rms_step(profile: pd.DataFrame, shapes: dict) -> pd.Series:
    """RMS of ΔW_l per weight: ‖ΔW_l‖/√(n_in n_out), with ‖ΔW_l‖ = update_ratio · ‖W_l‖."""
    return per_weight(profile["update_ratio"] * profile["weight_norm"], shapes)


def _figure(table, losses, init, quarter) -> Figure:
    fig = Figure(figsize=(16, 4.5), layout="constrained")
    ax_loss, ax_init, ax_quarter = fig.subplots(1, 3)
    for o in OPTIMIZERS:
        runs = table[table["optimizer"] == o]
        for i, r in enumerate(runs.itertuples()):
            curve = losses[r.run_id]
            ax_loss.plot(curve["step"], curve["value"], color=COLORS[o], lw=1, alpha=0.85,
                         label=f"{o} (lr {fmt(float(r.lr))})" if i == 0 else None)  # fmt: skip
        if len(runs):
            for ax, profiles in ((ax_init, init), (ax_quarter, quarter)):
                p = profiles[runs["run_id"].iloc[0]]
                p = p[p["update_ratio"] > 0]
                ax.plot(p.index, p["update_ratio"], color=COLORS[o], marker=".", lw=1.2, label=o)
    ax_loss.axhline(TARGET, color="0.4", ls=":", lw=0.8)
    ax_loss.set(yscale="log", xlabel="training step", ylabel="minibatch loss (BCE, nats)",
                title="training loss")  # fmt: skip
    for ax, when in ((ax_init, "the first step"), (ax_quarter, "¼ of training")):
        ax.set(yscale="log", xlabel="layer l (1 = input side)", ylabel="‖ΔW_l‖ / ‖W_l‖",
               title=f"relative update per layer, {when}")  # fmt: skip
    for ax in (ax_loss, ax_init, ax_quarter):
        ax.grid(alpha=0.3, which="both", lw=0.5)
        ax.legend(fontsize=8)
    return fig
