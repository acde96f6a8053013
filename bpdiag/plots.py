"""Figures of one run's gradient flow (matplotlib's object API: no pyplot state, no GUI backend)."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bpdiag.diagnose import layer_profile

LABEL_COLORS = {
    "healthy": "tab:green",
    "vanishing": "tab:blue",
    "exploding": "tab:red",
    "diverged": "darkred",
    "dead": "dimgray",
    "saturated": "tab:purple",
}


def run_title(hist) -> str:
    """'depth 20 × 128 · sigmoid · xavier_normal · sgd lr 0.01 · clip none — vanishing'."""
    m, c = hist.model, hist.config
    widths = sorted(set(m["sizes"][1:-1]))
    width = f" × {widths[0]}" if len(widths) == 1 else ""
    clip = f" · clip {c['clip']}" + (f" {c['clip_value']:g}" if c.get("clip_value") else "")
    return (
        f"depth {len(m['sizes']) - 1}{width} · {m['activation']} · {m['init']} · "
        f"{c['optimizer']} lr {c['lr']:g}{clip} — {hist.diagnosis.label}"
    )


def _relative_log10(profile) -> np.ndarray:
    """log10(v_l / v_L) per recorded step: (L, n_records); NaN where undefined."""
    values = profile.to_numpy(dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.log10(values / values[-1:, :])
    rel[~np.isfinite(rel)] = np.nan
    return rel


def gradient_flow(hist, title: str | None = None) -> Figure:
    """Heatmaps of log10(‖δ_l‖/‖δ_L‖) and log10(‖∂L/∂W_l‖/‖∂L/∂W_L‖): layers × steps.

    The diverging colormap is centred on the last layer's value: blue layers receive less
    gradient than the output layer (vanishing), red ones more (exploding).
    """
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    panels = [("delta_rms", "error signal ‖δ_l‖"), ("grad_norm_W", "weight gradient ‖∂L/∂W_l‖")]
    for ax, (column, name) in zip(axes, panels, strict=True):
        profile = layer_profile(hist.layers, column)
        rel = _relative_log10(profile)
        span = float(np.nanmax(np.abs(rel))) if np.isfinite(rel).any() else 1.0
        span = min(max(span, 2.0), 30.0)  # at least ±2 decades: healthy runs stay pale
        steps, layers = profile.index.to_numpy(), profile.columns.to_numpy()
        mesh = ax.pcolormesh(
            _edges(steps), _edges(layers), rel, cmap="RdBu_r",
            norm=TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span), shading="flat",
        )  # fmt: skip
        ax.set_xlabel("step")
        ax.set_title(name)
        fig.colorbar(mesh, ax=ax, label=f"log10({name.split()[-1]} / layer L)")
    axes[0].set_ylabel("layer (1 = input side)")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or run_title(hist), color=LABEL_COLORS.get(hist.diagnosis.label, "black"))
    return fig


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (for pcolormesh's flat shading)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def norm_vs_depth(hist, title: str | None = None) -> Figure:
    """‖δ_l‖ and ‖∂L/∂W_l‖ against layer at init, mid-training and the end, with the theory."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    steps = np.sort(hist.layers["step"].unique())
    picks = dict.fromkeys([steps[0], steps[len(steps) // 2], steps[-1]])
    pred = hist.theory
    for ax, column, name, theory in (
        (axes[0], "delta_rms", "RMS ‖δ_l‖ (error signal)", pred.delta_ratio if pred else None),
        (
            axes[1],
            "grad_norm_W",
            "‖∂L/∂W_l‖ (weight gradient)",
            pred.grad_W_ratio if pred else None,
        ),
    ):
        profile = layer_profile(hist.layers, column)
        layers = profile.columns.to_numpy()
        for i, step in enumerate(picks):
            values = profile.loc[step].to_numpy(dtype=np.float64)
            ax.plot(layers, np.where(values > 0, values, np.nan), "o-", ms=3,
                    color=f"C{i}", label=f"step {step}")  # fmt: skip
        if theory is not None:
            anchor = profile.iloc[0].to_numpy(dtype=np.float64)[-1]
            ax.plot(layers, anchor * theory, "k--", lw=1.2, label="mean-field theory at init")
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = input side)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or run_title(hist), color=LABEL_COLORS.get(hist.diagnosis.label, "black"))
    return fig


def save(fig: Figure, path) -> None:
    """Write a figure as PNG (Agg), 110 dpi."""
    fig.savefig(path, dpi=110)
