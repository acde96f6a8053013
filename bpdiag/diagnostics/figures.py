"""Figures of one run's gradient flow (matplotlib's object API: no pyplot state, no GUI backend)."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from bpdiag.diagnostics.verdict import layer_profile
from bpdiag.schema import charted_layers

LABEL_COLORS = {
    "healthy": "tab:green",
    "vanishing": "tab:blue",
    "exploding": "tab:red",
    "diverged": "darkred",
    "dead": "dimgray",
    "saturated": "tab:purple",
}


def run_title(hist) -> str:
    """'depth 20 × 128 · sigmoid · xavier_normal · batchnorm · skip ×0.22 · sgd lr 0.01 · clip
    none — vanishing' (the normalization and skip only where the net has them)."""
    m, c = hist.model, hist.config
    widths = sorted(set(m["sizes"][1:-1]))
    width = f" × {widths[0]}" if len(widths) == 1 else ""
    clip = f" · clip {c['clip']}" + (f" {c['clip_value']:g}" if c.get("clip_value") else "")
    cure = f" · {m['norm']}" if m.get("norm", "none") != "none" else ""
    if any(m.get("skips") or []):  # residual=True gives no skip where no widths match
        alpha = m.get("alpha", 1.0)
        cure += " · skip" + (f" ×{alpha:.3g}" if alpha != 1 else "")
    return (
        f"depth {len(m['sizes']) - 1}{width} · {m['activation']} · {m['init']}{cure} · "
        f"{c['optimizer']} lr {c['lr']:g}{clip} — {hist.diagnosis.label}"
    )


def _relative_log10(profile) -> np.ndarray:
    """log10(v_l / v_L) per recorded step: (L, n_records); NaN where undefined."""
    values = profile.to_numpy(dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.log10(values / values[-1:, :])
    rel[~np.isfinite(rel)] = np.nan
    return rel


FLOW_PANELS = (("delta_rms", "error signal ‖δ_l‖"), ("grad_norm_W", "weight gradient ‖∂L/∂W_l‖"))
STEP_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")  # C0-C2 as hex: "C0" is resolved on every draw
DEPTH_PANELS = (("delta_rms", "RMS ‖δ_l‖ (error signal)", "delta_ratio"),
                ("grad_norm_W", "‖∂L/∂W_l‖ (weight gradient)", "grad_W_ratio"))  # fmt: skip


def gradient_flow(hist, title: str | None = None) -> Figure:
    """Heatmaps of log10(‖δ_l‖/‖δ_L‖) and log10(‖∂L/∂W_l‖/‖∂L/∂W_L‖): layers × steps.

    The diverging colormap is centred on the last layer's value: blue layers receive less
    gradient than the output layer (vanishing), red ones more (exploding).
    """
    return _draw_flow(_flow_frame(), hist, title)


def norm_vs_depth(hist, title: str | None = None) -> Figure:
    """‖δ_l‖ and ‖∂L/∂W_l‖ against layer at init, mid-training and the end, with the theory."""
    return _draw_depth(_depth_frame(), hist, title)


class RunFigures:
    """Both figures of one run as PNG bytes, drawn into matplotlib objects that are built once
    and reused run after run: building the axes, colorbars and ticks cost as much as drawing
    them, and a sweep worker draws hundreds of runs. The PNGs equal freshly built figures'."""

    def __init__(self) -> None:
        self._flow: Figure | None = None
        self._depth: Figure | None = None

    def render(self, hist, title: str | None = None) -> dict[str, bytes]:
        """{"gradient_flow.png": …, "grad_norm_vs_depth.png": …, "instruments.png": …} (the
        instruments' figure is drawn afresh: its panels change with what was measured)."""
        self._flow = _draw_flow(self._flow or _flow_frame(), hist, title)
        self._depth = _draw_depth(self._depth or _depth_frame(), hist, title)
        return {"gradient_flow.png": _png(self._flow), "grad_norm_vs_depth.png": _png(self._depth),
                "instruments.png": _png(instruments(hist, title))}  # fmt: skip


def _png(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    save(fig, buf)
    return buf.getvalue()


def _flow_frame() -> Figure:
    """gradient_flow's axes, labels and colorbars, without data (one empty mesh per panel)."""
    fig = Figure(
        figsize=(12, 4.8)
    )  # fixed margins: constrained layout re-measures every artist on each draw
    axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"left": 0.06, "right": 0.97, "bottom": 0.11,
                                                       "top": 0.86, "wspace": 0.12})  # fmt: skip
    for ax, (_, name) in zip(axes, FLOW_PANELS, strict=True):
        mesh = ax.pcolormesh([0, 1], [0, 1], np.zeros((1, 1)), cmap="RdBu_r", shading="flat")
        ax.set_xlabel("step")
        ax.set_title(name, y=1.01)  # an explicit y skips matplotlib's costly title placement
        fig.colorbar(mesh, ax=ax, label=f"log10({name.split()[-1]} / layer L)")
    axes[0].set_ylabel("layer (1 = input side)")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    _place_labels(axes, y=-0.085)
    for cax in fig.axes[2:]:
        cax.yaxis.set_label_coords(4.2, 0.5)
    fig.suptitle("")
    return fig


def _place_labels(axes, y: float) -> None:
    """Fixed axis-label positions (axes fractions): placing them automatically measures every
    tick label's box."""
    for ax in axes:
        ax.xaxis.set_label_coords(0.5, -0.08)
        ax.yaxis.set_label_coords(y, 0.5)


def _draw_flow(fig: Figure, hist, title: str | None) -> Figure:
    for ax, (column, _) in zip(fig.axes[:2], FLOW_PANELS, strict=True):
        old = ax.collections[0]
        colorbar = old.colorbar
        old.remove()
        profile = layer_profile(hist.layers, column)
        rel = _relative_log10(profile)
        span = float(np.nanmax(np.abs(rel))) if np.isfinite(rel).any() else 1.0
        span = min(max(span, 2.0), 30.0)  # at least ±2 decades: healthy runs stay pale
        x, y = _edges(profile.index.to_numpy()), _edges(profile.columns.to_numpy())
        mesh = ax.pcolormesh(x, y, rel, cmap="RdBu_r", shading="flat",
                             norm=TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span))  # fmt: skip
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(y[0], y[-1])
        colorbar.update_normal(mesh)
        mesh.colorbar = colorbar
    _suptitle(fig, hist, title)
    return fig


def _depth_frame() -> Figure:
    """norm_vs_depth's axes: three step lines and the theory line per panel, without data."""
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2, gridspec_kw={"left": 0.07, "right": 0.98, "bottom": 0.12,
                                           "top": 0.86, "wspace": 0.2})  # fmt: skip
    for ax, (_, name, _) in zip(axes, DEPTH_PANELS, strict=True):
        for color in STEP_COLORS:
            ax.plot([], [], "o-", ms=3, color=color)
        ax.plot([], [], "k--", lw=1.2, label="mean-field theory at init")
        ax.set_yscale("log")
        _fast_log_axis(ax.yaxis)
        ax.set_xlabel("layer (1 = input side)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name, y=1.01)
        ax.grid(True, which="major", alpha=0.3)
    _place_labels(axes, y=-0.1)
    fig.suptitle("")
    return fig


def _draw_depth(fig: Figure, hist, title: str | None) -> Figure:
    steps = np.sort(hist.layers["step"].unique())
    picks = list(dict.fromkeys([steps[0], steps[len(steps) // 2], steps[-1]]))
    pred = hist.theory
    for ax, (column, _, ratio) in zip(fig.axes, DEPTH_PANELS, strict=True):
        profile = layer_profile(hist.layers, column)
        layers = profile.columns.to_numpy()
        *step_lines, theory_line = ax.get_lines()
        for i, line in enumerate(step_lines):
            shown = i < len(picks)
            values = profile.loc[picks[i]].to_numpy(dtype=np.float64) if shown else layers * 0.0
            line.set_data(layers, np.where(values > 0, values, np.nan))
            line.set_label(f"step {picks[i]}" if shown else "_hidden")
            line.set_visible(shown)
        theory = getattr(pred, ratio) if pred else None
        if theory is not None and np.isfinite(theory).sum() < 2:
            theory = None  # no prediction for this architecture (``theory.predict_cured``)
        if theory is not None:
            anchor = profile.iloc[0].to_numpy(dtype=np.float64)[-1]
            theory_line.set_data(layers, anchor * theory)
        theory_line.set_visible(theory is not None)
        theory_line.set_label("mean-field theory at init" if theory is not None else "_hidden")
        ax.relim(visible_only=True)
        ax.autoscale_view()
    # one legend serves both panels; "best" placement would search over all the data
    fig.axes[1].legend(fontsize=8, loc="lower right")
    _suptitle(fig, hist, title)
    return fig


def instruments(hist, title: str | None = None) -> Figure:
    """The instruments of one run: the gradient noise scale B_simple per layer over training
    (against the batch size: above it, noise dominates the step), the sharpness against 2/lr,
    and the singular values of the Jacobian at init against mean-field theory."""
    from matplotlib import colormaps

    fig = Figure(figsize=(15, 4.4))
    ax_noise, ax_sharp, ax_jac = fig.subplots(1, 3, gridspec_kw={
        "left": 0.05, "right": 0.985, "bottom": 0.13, "top": 0.84, "wspace": 0.25})  # fmt: skip
    # noise scale per layer
    layers = hist.layers
    depth = int(layers["layer"].max())
    shown = charted_layers(depth)
    cmap = colormaps["viridis"]
    for layer in shown:
        rows = layers[layers["layer"] == layer]
        ax_noise.plot(rows["step"], _positive(rows["noise_scale"]), lw=1,
                      color=cmap((layer - 1) / max(depth - 1, 1)), label=f"layer {layer}")  # fmt: skip
    ax_noise.plot(hist.steps["step"], _positive(hist.steps["noise_scale_total"]), "k", lw=2,
                  label="all layers")  # fmt: skip
    batch = hist.model.get("batch")
    if batch:
        ax_noise.axhline(batch, color="tab:red", ls="--", lw=1, label=f"batch m = {batch}")
    ax_noise.set_yscale("log")
    _fast_log_axis(ax_noise.yaxis)
    ax_noise.set_title("gradient noise scale B_simple = tr Σ / ‖G‖²", y=1.01)
    ax_noise.set_xlabel("step")
    ax_noise.legend(fontsize=7, loc="upper right", ncol=2)
    # sharpness against 2/lr
    sh = hist.sharpness
    ax_sharp.set_title("sharpness λ_max of the Hessian", y=1.01)
    ax_sharp.set_xlabel("step")
    if len(sh):
        ax_sharp.plot(sh["step"], sh["sharpness"], "o-", ms=3, color="tab:blue", label="λ_max")
        ax_sharp.axhline(sh["two_over_lr"].iloc[0], color="tab:red", ls="--",
                         label=f"2/lr = {sh['two_over_lr'].iloc[0]:.4g}")  # fmt: skip
        ax_sharp.legend(fontsize=8, loc="lower right")
    else:
        _empty(ax_sharp, "not measured\n(sharpness_every = K measures it every K records)")
    # the Jacobian's spectrum at init
    js = hist.jacobian
    ax_jac.set_title("Jacobian at init: singular values", y=1.01)
    if js is not None:
        s = js.singular_values
        k = np.arange(1, s.shape[1] + 1)
        for row in s:
            ax_jac.plot(k, np.where(row > 0, row, np.nan), ".-", ms=3, lw=0.8, alpha=0.8)
        if np.isfinite(js.gain_theory) and js.gain_theory > 0:
            ax_jac.axhline(np.sqrt(js.gain_theory), color="k", ls="--", lw=1,
                           label="√(mean-field χ^(L))")  # fmt: skip
            ax_jac.legend(fontsize=8, loc="upper right")
        ax_jac.set_yscale("log")
        _fast_log_axis(ax_jac.yaxis)
        ax_jac.set_xlabel(f"k (∂a_{js.end}/∂a_{js.start}, {s.shape[0]} inputs)")
        ax_jac.text(0.03, 0.03, f"mean σ² {js.gain:.3g} (theory {js.gain_theory:.3g})\n"
                    f"spread Var σ²/(E σ²)² {js.spread:.3g}\nσ_max/σ_min {js.condition:.3g}",
                    transform=ax_jac.transAxes, ha="left", va="bottom", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})  # fmt: skip
    else:
        _empty(ax_jac, "not taken\n(jacobian_inputs = n takes it; not for BatchNorm)")
    _place_labels(fig.axes, y=-0.1)
    _suptitle(fig, hist, title)
    return fig


def _positive(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return np.where(v > 0, v, np.nan)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _suptitle(fig: Figure, hist, title: str | None) -> None:
    fig.suptitle(title or run_title(hist), color=LABEL_COLORS.get(hist.diagnosis.label, "black"))


def _fast_log_axis(axis) -> None:
    """Plain '1e-05' labels and no minor ticks: mathtext labels and hundreds of minor tick
    objects made a log axis the slowest part of a run's figures."""
    axis.set_major_locator(LogLocator(numticks=9))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
    axis.set_minor_locator(NullLocator())


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (for pcolormesh's flat shading)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def save(fig: Figure, path, dpi: int = 100) -> None:
    """Write a figure as PNG (Agg), with unhinted glyphs: text is most of a run figure's cost,
    and FreeType's hinting is a large part of drawing text."""
    from matplotlib import rc_context

    with rc_context({"text.hinting": "none"}):
        fig.savefig(path, dpi=dpi, format="png", pil_kwargs={"compress_level": 1})
