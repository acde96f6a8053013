"""Schoenholz et al. 2017: tanh nets train when their depth is below a few depth scales ξ_c,
which diverge at the edge of chaos; a heatmap of accuracy over σ_w² × depth with c·ξ_c on it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bpdiag.diagnostics.theory import gaussian_expectation
from bpdiag.studies.report import Check, Report, fmt, markdown_table
from bpdiag.studies.store import StudyData, input_second_moment

TITLE = "Schoenholz et al. 2017: the trainable depth of tanh nets follows the depth scale ξ_c"
SPECS = ("edge_of_chaos.yaml",)
INTRO = """
S. S. Schoenholz, J. Gilmer, S. Ganguli, J. Sohl-Dickstein, *Deep Information Propagation*,
ICLR 2017 ([arXiv:1611.01232](https://arxiv.org/abs/1611.01232)): in a random tanh net the
correlation between two inputs approaches its fixed point like e^(−l/ξ_c), with
ξ_c = −1/ln χ_c and χ_c = σ_w² E[φ′(u₁)φ′(u₂)] at the fixed point; ξ_c diverges at the order–chaos
transition, and nets train only when their depth L is below about 6ξ_c (their Figure 5, MNIST
and CIFAR-10). Here: tanh MLPs of width 64 on scikit-learn's digits with zero biases (σ_b² = 0,
where the transition is at σ_w² = 1; the paper's grid had σ_b² = 0.05), weights N(0, σ_w²/64),
σ_w² from 0.5 to 4 and depth 5 to 100, plain SGD at lr 0.01 for 1000 steps of 64 samples, one
seed per cell. A cell *trains* when its training accuracy after those steps is at least 0.5
(chance is 0.1).
"""
TRAINED = 0.5
C = 6.0  # the paper's constant: trainable while L ≲ 6 ξ_c


def build(data: StudyData, report: Report) -> str:
    table = data.table("edge_of_chaos")
    width = int(table["width"].iloc[0])
    table["sigma_w2"] = [_sigma_w2(init, width) for init in table["init"]]
    q0 = input_second_moment(table.iloc[0])
    sigmas = sorted(table["sigma_w2"].unique())
    xi = {s: depth_scale(s, q0) for s in sigmas}
    table["xi_c"] = table["sigma_w2"].map(xi)
    table["trains"] = table["final_accuracy"] >= TRAINED
    table["predicted"] = table["depth"] <= C * table["xi_c"]
    agree = float((table["trains"] == table["predicted"]).mean())
    report.check(Check(f"cells whose outcome (trains: accuracy ≥ {TRAINED}) matches L ≤ 6ξ_c",
                       "trainable iff L ≲ 6ξ_c (Fig. 5)", agree, "≥ 80 % of the cells",
                       agree >= 0.8, f"{agree:.0%} of {len(table)}"))  # fmt: skip
    best_c, best = _best_constant(table)
    report.check(Check("the constant c that best separates the cells by L ≤ c·ξ_c",
                       "c ≈ 6", best_c, "3 ≤ c ≤ 12 (within a factor 2)", 3 <= best_c <= 12,
                       f"{fmt(best_c, 2)} ({best:.0%} of the cells)"))  # fmt: skip
    critical = table[np.isclose(table["sigma_w2"], 1.0)]
    deepest = (
        int(critical.loc[critical["trains"], "depth"].max()) if critical["trains"].any() else 0
    )
    report.check(Check("at the edge of chaos (σ_w² = 1): the deepest net that trains",
                       "the deepest (ξ_c → ∞)", float(deepest), f"the grid's deepest, "
                       f"{int(table['depth'].max())}", deepest == int(table["depth"].max()),
                       str(deepest)))  # fmt: skip

    report.figure("edge_of_chaos.png", _heatmap(table, q0),
                  f"Training accuracy after {int(table['steps'].iloc[0])} SGD steps per "
                  f"σ_w² and depth (tanh, width {width}, digits), with mean-field theory's "
                  f"6ξ_c (white) and 3ξ_c (dashed): nets train below the curves, and the "
                  f"trainable depth is largest near the edge of chaos (dotted: σ_w² = 1).")  # fmt: skip
    rows = [{"σ_w²": float(s), "ξ_c (theory)": float(xi[s]), "6ξ_c": float(C * xi[s]),
             "deepest that trains": int(g.loc[g["trains"], "depth"].max()) if g["trains"].any()
             else "none", "accuracy by depth": " · ".join(
                 f"{int(r.depth)}: {r.final_accuracy:.2f}" for r in g.sort_values("depth").itertuples())}
            for s, g in table.groupby("sigma_w2")]  # fmt: skip
    report.text(f"""## Results

Per σ_w² (ξ_c from the fixed points of the mean-field maps, computed by quadrature with the
digits' E[x²] = {q0:.3f}; training accuracy after {int(table["steps"].iloc[0])} steps at each
depth):

{markdown_table(rows)}

With σ_b² = 0 the ordered phase (σ_w² < 1) has q* = 0, where χ_c = σ_w² and ξ_c = −1/ln σ_w²;
the chaotic phase (σ_w² > 1) has q* > 0 and its stable correlation c* = 0 (tanh is odd), where
χ_c = σ_w² (E[φ′(√q* z)])². The paper's nets had biases and trained longer; the constant that
separates this grid best is reported beside theirs.{_edge_note(table)}""")
    return (f"Whether a tanh net trains follows mean-field theory's depth scale: in "
            f"{agree:.0%} of {len(table)} cells of σ_w² × depth the net trains exactly when L ≤ "
            f"6ξ_c, and at the edge of chaos (σ_w² = 1) a {deepest}-layer net trains.")  # fmt: skip


def _edge_note(table: pd.DataFrame) -> str:
    """Why the deepest net at σ_w² = 1 may not train, where it does not."""
    deepest = int(table["depth"].max())
    edge = table[np.isclose(table["sigma_w2"], 1.0) & (table["depth"] == deepest)]
    if edge.empty or bool(edge["trains"].all()):
        return ""
    best = table[(table["depth"] == deepest)].sort_values("final_accuracy").iloc[-1]
    return (
        f"\n\n**At the edge itself.** Without biases the edge σ_w² = 1 has q* = 0: the "
        f"forward signal's variance decays like 1/l instead of settling, so the "
        f"{deepest}-layer net there learns too slowly for these steps (training accuracy "
        f"{float(edge['final_accuracy'].iloc[0]):.2f}), while just on the chaotic side "
        f"(σ_w² = {best['sigma_w2']:g}, ξ_c = {depth_scale(best['sigma_w2'], 1.0):.0f}) the "
        f"signal keeps its size and the same depth trains ({best['final_accuracy']:.2f}). "
        f"The trainable depth peaks next to the transition, not on it: the third check is "
        f"reported as not agreeing. With σ_b² > 0, as in the paper, q* > 0 at the edge."
    )


def depth_scale(sigma_w2: float, q0: float, iters: int = 400) -> float:
    """ξ_c = −1/ln χ_c at the stable fixed points (q*, c*) of a bias-free tanh net's mean-field
    maps (first layer q_1 = σ_w² q0); inf where χ_c ≥ 1 − 1e-12."""
    q = sigma_w2 * q0
    for _ in range(iters):
        q = sigma_w2 * gaussian_expectation(lambda u: np.tanh(u) ** 2, q)
    c = 0.5
    for _ in range(iters):
        c = _correlation_map(sigma_w2, q, c)
    chi_c = sigma_w2 * _pair_expectation(q, c, lambda u: 1 - np.tanh(u) ** 2)
    return math.inf if chi_c >= 1 - 1e-12 else -1.0 / math.log(chi_c)


_Z, _W = np.polynomial.hermite_e.hermegauss(81)  # ∫ f(z) e^(−z²/2) dz ≈ Σ w f(z)
_W = _W / _W.sum()


def _pair_expectation(q: float, c: float, f) -> float:
    """E[f(u₁) f(u₂)], (u₁, u₂) Gaussian with variances q and correlation c."""
    if q <= 0:
        return float(f(np.zeros(1))[0] ** 2)
    s = math.sqrt(q)
    z1, z2 = _Z[:, None], _Z[None, :]
    u1, u2 = s * z1, s * (c * z1 + math.sqrt(max(1 - c * c, 0.0)) * z2)
    return float(np.sum(_W[:, None] * _W[None, :] * f(u1) * f(u2)))


def _correlation_map(sigma_w2: float, q: float, c: float) -> float:
    if q <= 1e-300:
        return 1.0
    return sigma_w2 * _pair_expectation(q, c, np.tanh) / q


def _sigma_w2(init: str, width: int) -> float:
    """σ_w² of ``normal_<s>`` at fan-in ``width``: width · s²."""
    return round(width * float(init.removeprefix("normal_")) ** 2, 3)


def _best_constant(table: pd.DataFrame) -> tuple[float, float]:
    """The c in [0.5, 50] for which L ≤ c·ξ_c matches the most cells (the smallest such c)."""
    best_c, best = math.nan, -1.0
    for c in np.geomspace(0.5, 50, 200):
        score = float((table["trains"] == (table["depth"] <= c * table["xi_c"])).mean())
        if score > best:
            best_c, best = float(c), score
    return best_c, best


def _heatmap(table: pd.DataFrame, q0: float) -> Figure:
    sigmas = np.array(sorted(table["sigma_w2"].unique()))
    depths = np.array(sorted(table["depth"].unique()))
    acc = table.pivot_table(index="depth", columns="sigma_w2", values="final_accuracy")
    acc = acc.reindex(index=depths, columns=sigmas)
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    x_edges = _edges(sigmas)
    y_edges = _edges(depths, log=True)
    mesh = ax.pcolormesh(x_edges, y_edges, acc.to_numpy(dtype=float), cmap="viridis", vmin=0,
                         vmax=1, shading="flat")  # fmt: skip
    fine = np.linspace(x_edges[0], x_edges[-1], 80)
    xi = np.array([depth_scale(s, q0, iters=200) for s in fine])
    for c, style in ((C, "-"), (C / 2, "--")):
        ax.plot(fine, np.minimum(c * xi, y_edges[-1] * 10), style, color="white", lw=2,
                label=f"{c:g} ξ_c (mean-field)")  # fmt: skip
    for r in table.itertuples():
        ax.text(r.sigma_w2, r.depth, f"{r.final_accuracy:.2f}", ha="center", va="center",
                fontsize=7, color="k" if r.final_accuracy > 0.6 else "white")  # fmt: skip
    ax.set(yscale="log", ylim=(y_edges[0], y_edges[-1]), xlim=(x_edges[0], x_edges[-1]),
           xlabel="σ_w² (weight variance × fan-in)", ylabel="depth L (layers)",
           title="tanh nets: training accuracy against mean-field depth scale")  # fmt: skip
    ax.set_yticks(depths, [str(d) for d in depths])
    ax.axvline(1.0, color="0.8", lw=0.8, ls=":")
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(0, -0.12),
        ncol=2,
        fontsize=8,
        facecolor="0.3",
        labelcolor="white",
    )  # below the cells, whose numbers it would hide
    fig.colorbar(mesh, ax=ax, label="training accuracy (10 classes; chance 0.1)")
    return fig


def _edges(centers: np.ndarray, log: bool = False) -> np.ndarray:
    v = np.log(centers) if log else centers.astype(float)
    mid = (v[1:] + v[:-1]) / 2
    edges = np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
    return np.exp(edges) if log else edges
