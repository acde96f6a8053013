"""Figures render from real runs, with the verdict in the title."""

import numpy as np
from matplotlib.figure import Figure

from bpdiag import MLP, data, train
from bpdiag.diagnostics import figures


def _hist(activation="sigmoid", init="xavier_normal", steps=30):
    ds = data.load("spirals", n_samples=200)
    net = MLP([2] + [32] * 11 + [1], activation=activation, loss="bce", init=init, seed=0)
    return train(net, ds.X_train, ds.Y_train, optimizer="sgd", lr=0.05, steps=steps, record_every=5)


def test_gradient_flow_heatmap(tmp_path):
    hist = _hist()
    fig = figures.gradient_flow(hist)
    assert isinstance(fig, Figure) and "vanishing" in fig.get_suptitle()
    assert "depth 12 × 32 · sigmoid · xavier_normal · sgd lr 0.05" in fig.get_suptitle()
    mesh = fig.axes[0].collections[0]
    values = np.asarray(mesh.get_array()).reshape(12, -1)  # layers × records
    assert values[-1].max() == 0 and values[0].max() < -3  # layer 1 far below layer L
    figures.save(fig, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_norm_vs_depth_with_theory(tmp_path):
    hist = _hist("relu", "he_normal")
    fig = figures.norm_vs_depth(hist)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "mean-field theory at init" in labels and labels[0] == "step 0"
    figures.save(fig, tmp_path / "n.png")
    assert (tmp_path / "n.png").stat().st_size > 10_000


def test_plots_survive_a_diverged_run():
    ds = data.load("spirals", n_samples=200)
    net = MLP([2, 32, 32, 1], activation="relu", loss="bce", seed=0)
    hist = train(net, ds.X_train, ds.Y_train, optimizer="sgd", lr=1e6, steps=50, record_every=1)
    assert hist.diagnosis.label == "diverged"
    figures.gradient_flow(hist)
    figures.norm_vs_depth(hist)


def test_reused_figures_draw_the_same_pngs_as_fresh_ones():
    """RunFigures redraws one pair of figures run after run; each PNG must equal a fresh one's,
    whatever ran before it (deeper, shallower, diverged, with or without a theory line)."""
    ds = data.load("spirals", n_samples=200)
    net = MLP([2, 32, 32, 1], activation="relu", loss="bce", seed=0)
    diverged = train(net, ds.X_train, ds.Y_train, optimizer="sgd", lr=1e6, steps=50, record_every=1)
    runs = [
        _hist("relu", "he_normal"),  # theory line
        diverged,  # a shallow net, few records
        _hist("sigmoid", steps=60),
        _hist("relu", "he_normal"),
    ]
    reused = figures.RunFigures()
    for hist in runs:
        pngs = reused.render(hist, "t")
        fresh = {"gradient_flow.png": figures.gradient_flow(hist, "t"),
                 "grad_norm_vs_depth.png": figures.norm_vs_depth(hist, "t")}  # fmt: skip
        for name, fig in fresh.items():
            assert pngs[name] == figures._png(fig), name


def test_instruments_figure_with_and_without_the_optional_instruments(tmp_path):
    ds = data.load("spirals", n_samples=200)
    net = MLP([2] + [16] * 5 + [1], activation="tanh", loss="bce", seed=0)
    hist = train(net, ds.X_train, ds.Y_train, optimizer="sgd", lr=0.1, steps=40, record_every=5,
                 sharpness_every=2, jacobian_inputs=3)  # fmt: skip
    fig = figures.instruments(hist)
    noise, sharp, jac = fig.axes
    assert noise.get_lines()[-2].get_label() == "all layers"  # the total, then the batch size
    assert any(line.get_label().startswith("2/lr = 20") for line in sharp.get_lines())
    assert len(jac.get_lines()) == 3 + 1  # one spectrum per input, and the theory
    figures.save(fig, tmp_path / "i.png")
    assert (tmp_path / "i.png").stat().st_size > 10_000
    plain = figures.instruments(_hist(steps=10))
    assert "not measured" in plain.axes[1].texts[0].get_text()
    assert "not taken" in plain.axes[2].texts[0].get_text()
