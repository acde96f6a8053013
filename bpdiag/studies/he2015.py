"""He et al. 2015: a 30-layer ReLU net stalls from Xavier's init and trains from He's.

Checks: every Xavier seed stalls and every He seed trains; the error signal's per-layer
factor at init is 2^(−1/2) under Xavier and 1 under He (mean-field χ = σ_w²/2); and the exact
identity behind it: with the same seed, Xavier's weights are He's times 2^(−1/2), so a ReLU
net's weight gradients per unit of output error are exactly 2^(−(L−1)/2) times He's, and its
relative updates ‖ΔW‖/‖W‖ 2^(−(L−2)/2) times.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bpdiag.studies.report import OKABE_ITO, Check, Report, fmt, markdown_table, within_log
from bpdiag.studies.store import StudyData, at, first_step_below

TITLE = "He et al. 2015: Xavier's init stalls a 30-layer ReLU net, He's init trains it"
SPECS = ("he2015.yaml",)
INTRO = """
K. He, X. Zhang, S. Ren, J. Sun, *Delving Deep into Rectifiers*, ICCV 2015
([arXiv:1502.01852](https://arxiv.org/abs/1502.01852)), §2.2 and Figure 3: a ReLU layer with
weights of variance 1/n halves the energy of the back-propagated signal, so in a 30-layer net
the gradient reaching the input is 2^(−29/2) ≈ 4e-5 of the output's and training stalls;
variance 2/n keeps it and the net trains. Here: a 30-layer ReLU MLP of width 64 on two-class
spirals (a faithful smaller version of their 30-layer ImageNet net: the same depth and
initializations, a dense net instead of a convolutional one), plain SGD, four seeds per init.
"""
INITS = ("xavier_normal", "he_normal")
COLORS = dict(zip(INITS, OKABE_ITO, strict=False))
CHANCE = math.log(2)  # the loss of a two-class net that has learnt nothing
TRAINED = 0.5 * CHANCE  # "trains": the training loss falls below half of chance's


def build(data: StudyData, report: Report) -> str:
    table = data.table("he2015").sort_values(["init", "seed"], ignore_index=True)
    depth, width = int(table["depth"].iloc[0]), int(table["width"].iloc[0])
    losses = {r.run_id: data.series(r.run_id, "loss") for r in table.itertuples()}
    init_profile = {r.run_id: at(data.profile(r.run_id), "0_init") for r in table.itertuples()}
    table["steps_to_trained"] = [first_step_below(losses[r], TRAINED) for r in table["run_id"]]

    stalls = table[table["init"] == "xavier_normal"]
    trains = table[table["init"] == "he_normal"]
    stalled = int((stalls["final_loss"] > 0.95 * CHANCE).sum())
    trained = int((trains["final_loss"] < TRAINED).sum())
    report.check(Check("Xavier init: seeds that stall (final loss > 0.95 ln 2)",
                       "stalls (Fig. 3)", stalled, "all seeds", stalled == len(stalls),
                       f"{stalled} of {len(stalls)}"))  # fmt: skip
    report.check(Check("He init: seeds that train (final loss < ½ ln 2)", "converges (Fig. 3)",
                       trained, "all seeds", trained == len(trains),
                       f"{trained} of {len(trains)}"))  # fmt: skip
    tol = 1.5 * math.sqrt(5 / (width * (depth - 1)))  # Hanin 2018's spread, per layer
    for init, expected in (("xavier_normal", 2**-0.5), ("he_normal", 1.0)):
        decay = float(np.exp(np.log(table.loc[table["init"] == init, "decay_per_layer"]).mean()))
        report.check(Check(f"{init}: factor of RMS‖δ_l‖ per layer at init (geometric mean over "
                           "seeds)", f"{fmt(expected, 4)} (√(σ_w²/2))", decay,
                           f"|ln(measured/paper)| ≤ {tol:.3f} (1.5·√(5/(n(L−1))), Hanin "
                           "2018)", within_log(decay, expected, tol), fmt(decay, 4)))  # fmt: skip
    exact = exact_factors(depth, width)
    worst = max(exact["grad"].sub(1).abs().max(), exact["update"].sub(1).abs().max())
    report.check(Check("same seed: Xavier/He ‖∂L/∂W_l‖ per unit output error, every layer "
                       "(÷ 2^(−(L−1)/2)); ‖ΔW_l‖/‖W_l‖ (÷ 2^(−(L−2)/2))", "exactly 1",
                       1.0 + worst, "max deviation ≤ 1e-12 (float64)", worst <= 1e-12,
                       f"1 ± {worst:.1e}"))  # fmt: skip

    report.figure("he2015.png", _figure(table, losses, init_profile, depth),
                  f"A {depth}-layer ReLU net of width {width} on spirals. Left: training loss "
                  f"(one line per seed): Xavier's init stays at ln 2, He's trains. Middle: RMS "
                  f"error signal per layer at init, with the mean-field slope (dashed): "
                  f"2^(−1/2) per layer under Xavier. Right: relative update ‖ΔW_l‖/‖W_l‖ of "
                  f"the first SGD step.")  # fmt: skip

    report.text(f"""## Results

Per run (`final_loss` on the whole training set; steps until the minibatch loss first fell
below ½ ln 2 = {TRAINED:.3f}; the per-layer factor and the first/last δ ratio at init, with
mean-field theory's):

{markdown_table([_row(r) for r in table.itertuples()])}

**The exact factor.** With the same seed, each Xavier weight matrix of a square net is He's
times 2^(−1/2) (the same Gaussian draws, scaled), and a bias-free ReLU net is positively
homogeneous, so every activation below layer l and every error signal above it scale by a
power of 2^(−1/2). The paper's statement holds at a fixed output error; a real loss's output
error changes with the output (here MSE against zero targets: by 2^(−L/2)), so the table
divides it out. Computed at init on a square {depth}-layer ReLU net (width {width}, Gaussian
inputs, 256 samples, float64), per layer:

{markdown_table(_exact_rows(exact))}

The spirals nets above are not square (2 inputs, 1 output), so their ratios differ from the
square net's by the first and last layers' init factors and the loss's output error: the
relative update of the first SGD step is {fmt(_update_ratio(table, init_profile))}× He's
under Xavier (median over the hidden layers), against 2^(−(L−2)/2) = {2 ** (-(depth - 2) / 2):.3g}
for the square net at a fixed output error.""")

    summary = (f"A {depth}-layer ReLU net from Xavier's init stays at chance "
               f"({stalled} of {len(stalls)} seeds) while He's init trains it ({trained} of "
               f"{len(trains)}); the error signal falls by "
               f"{fmt(float(stalls['decay_per_layer'].mean()), 3)} per layer at init "
               f"(theory 2^(−1/2) = 0.707), and with the same seed the gradients are exactly "
               f"2^(−(L−1)/2) times He's.")  # fmt: skip
    return summary


def exact_factors(depth: int, width: int, seed: int = 0) -> pd.DataFrame:
    """Per layer, Xavier/He with the same seed on a square bias-free ReLU net, MSE against zero
    targets: ``grad`` = the ratio of ‖∂L/∂W_l‖ over 2^(−(L−1)/2)·2^(−L/2) (the backward factor
    times the output error's), ``update`` = the ratio of ‖∂L/∂W_l‖/‖W_l‖ (an SGD step's relative
    update) over 2^(−(L−2)/2)·2^(−L/2). Both are 1 up to rounding."""
    from bpdiag import MLP

    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((256, width)), np.zeros((256, width))
    grads, norms = {}, {}
    for init in INITS:
        net = MLP([width] * (depth + 1), activation="relu", loss="mse", init=init, seed=seed,
                  dtype="float64")  # fmt: skip
        _, g = net.loss_and_grads(X, Y)
        grads[init] = np.array([np.linalg.norm(gW) for gW, _ in g])
        norms[init] = np.array([np.linalg.norm(W) for W, _ in net.params])
    out_error = 2 ** (-depth / 2)
    grad = grads["xavier_normal"] / grads["he_normal"]
    update = grad * norms["he_normal"] / norms["xavier_normal"]
    return pd.DataFrame({
        "layer": np.arange(1, depth + 1), "raw_grad": grad, "raw_update": update,
        "grad": grad / (2 ** (-(depth - 1) / 2) * out_error),
        "update": update / (2 ** (-(depth - 2) / 2) * out_error),
    })  # fmt: skip


def _exact_rows(exact: pd.DataFrame) -> list[dict]:
    picks = sorted({0, 1, len(exact) // 2, len(exact) - 2, len(exact) - 1})
    return [{"layer": int(r.layer), "Xavier/He ‖∂L/∂W_l‖": float(r.raw_grad),
             "÷ 2^(−(L−1)/2)·2^(−L/2)": f"{r.grad:.15f}",
             "Xavier/He ‖ΔW_l‖/‖W_l‖": float(r.raw_update),
             "÷ 2^(−(L−2)/2)·2^(−L/2)": f"{r.update:.15f}"}
            for r in exact.iloc[picks].itertuples()]  # fmt: skip


def _row(r) -> dict:
    return {"init": r.init, "seed": int(r.seed), "verdict": r.label,
            "final loss": float(r.final_loss), "steps to ½ ln 2": "never" if math.isnan(r.steps_to_trained) else int(r.steps_to_trained),
            "δ factor per layer": float(r.decay_per_layer),
            "δ factor, theory": float(r.decay_per_layer_theory),
            "δ_1/δ_L at init": float(r.grad_ratio_first_last),
            "δ_1/δ_L, theory": float(r.grad_ratio_first_last_theory)}  # fmt: skip


def _update_ratio(table: pd.DataFrame, profiles: dict) -> float:
    def median(init: str) -> float:
        runs = table.loc[table["init"] == init, "run_id"]
        values = [profiles[r]["update_ratio"].iloc[1:-1].median() for r in runs]  # hidden
        return float(np.median(values))

    return median("xavier_normal") / median("he_normal")


def _figure(table, losses, profiles, depth: int) -> Figure:
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    ax_loss, ax_delta, ax_update = fig.subplots(1, 3)
    for init in INITS:
        rows = table[table["init"] == init]
        for i, r in enumerate(rows.itertuples()):
            label = f"{init} ({len(rows)} seeds)" if i == 0 else None
            curve = losses[r.run_id]
            ax_loss.plot(curve["step"], curve["value"], color=COLORS[init], lw=1, alpha=0.8,
                         label=label)  # fmt: skip
            prof = profiles[r.run_id]
            ax_delta.plot(prof.index, prof["delta_rms"], color=COLORS[init], lw=1,
                          marker=".", label=label)  # fmt: skip
            ax_update.plot(prof.index, prof["update_ratio"], color=COLORS[init], lw=1,
                           marker=".", label=label)  # fmt: skip
        factor = 2**-0.5 if init == "xavier_normal" else 1.0
        anchor = float(np.median([profiles[r]["delta_rms"].iloc[-2] for r in rows["run_id"]]))
        layers = np.arange(1, depth)
        ax_delta.plot(layers, anchor * factor ** (depth - 1 - layers), "--", color="0.3", lw=1,
                      label="mean field" if init == INITS[0] else None)  # fmt: skip
    ax_loss.axhline(CHANCE, color="0.5", lw=0.8, ls=":")
    ax_loss.text(0, CHANCE * 1.05, "ln 2 (chance)", color="0.4", fontsize=8)
    ax_loss.set(yscale="log", xlabel="training step", ylabel="minibatch loss (BCE, nats)",
                title="training loss")  # fmt: skip
    ax_delta.set(yscale="log", xlabel="layer l (1 = input side)", ylabel="RMS ‖δ_l‖ at init",
                 title="error signal across depth at init")  # fmt: skip
    ax_update.set(yscale="log", xlabel="layer l (1 = input side)",
                  ylabel="‖ΔW_l‖ / ‖W_l‖ (first SGD step)", title="relative update at init")  # fmt: skip
    for ax in (ax_loss, ax_delta, ax_update):
        ax.grid(alpha=0.3, which="both", lw=0.5)
        ax.legend(fontsize=8)
    return fig
