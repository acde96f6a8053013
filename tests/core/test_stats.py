"""Every recorded column equals its plain-NumPy recomputation from the parameters of that step."""

import numpy as np
import pytest
import reference as ref
from problems import make_problem

from bpdiag import MLP, train
from bpdiag._core.slots import LAYER_SLOTS as LAYER_COLUMNS


@pytest.mark.parametrize(
    ("activation", "optimizer", "clip", "c"),
    [
        ("sigmoid", "adam", "norm", 0.05),
        ("tanh", "momentum", "agc", 0.05),
        ("relu", "rmsprop", "none", None),
        ("leaky_relu", "sgd", "layer", 0.05),
        ("gelu", "adamw", "value", 0.01),
    ],
)
def test_layer_records_match_recomputation(activation, optimizer, clip, c):
    net = MLP([5, 12, 9, 7, 2], activation=activation, loss="bce", init="he_uniform", seed=4)
    X, Y = make_problem("bce", m=20, n_out=2)
    X *= 3  # push sigmoid/tanh units into saturation and some ReLUs dead
    start = net.params
    hist = train(net, X, Y, optimizer=optimizer, lr=0.05, steps=4, batch_size=None, clip=clip,
                 clip_value=c, record_every=1)  # fmt: skip
    assert list(hist.steps["step"]) == [0, 1, 2, 3]
    for s in range(4):
        params = ref.train_full_batch(start, X, Y, activation, "bce", optimizer, 0.05, s, clip, c)
        after = ref.train_full_batch(
            start, X, Y, activation, "bce", optimizer, 0.05, s + 1, clip, c
        )
        expected = ref.layer_stats(params, after, X, Y, activation, "bce", clip, c)
        got = hist.layers[hist.layers.step == s]
        for l, row in enumerate(expected):
            for col in LAYER_COLUMNS:
                value = got[col].iloc[l]
                if np.isnan(row[col]):
                    assert np.isnan(value), (s, l, col)
                else:
                    assert value == pytest.approx(row[col], rel=1e-10, abs=1e-300), (s, l + 1, col)
        value, grads = ref.loss_and_grads(params, X, Y, activation, "bce")
        total = np.linalg.norm(ref.flatten(grads))
        clipped = np.linalg.norm(ref.flatten(ref.clip(clip, c, params, grads)))
        step = hist.steps.iloc[s]
        assert step["loss"] == pytest.approx(value, rel=1e-12)
        assert step["grad_norm_total"] == pytest.approx(total, rel=1e-10)
        assert step["grad_norm_total_clipped"] == pytest.approx(clipped, rel=1e-10)
        expected_coef = min(c / (total + 1e-6), 1.0) if clip == "norm" else clipped / total
        assert step["clip_coef"] == pytest.approx(expected_coef, rel=1e-10)
        _, totals = ref.sample_stats(params, X, Y, activation, "bce")
        got_totals = step[["sample_grad_sq_total", "noise_scale_total", "grad_snr_total"]]
        assert list(got_totals) == pytest.approx(totals, rel=1e-10)


def test_saturation_and_dead_units_are_seen():
    net = MLP([5, 12, 9, 7, 2], activation="relu", loss="bce", seed=4)
    net.set_params([(W, np.full_like(b, -5.0)) for W, b in net.params])
    X, Y = make_problem("bce", m=20, n_out=2)
    hist = train(net, X, Y, steps=2, batch_size=None, record_every=1)
    hidden = hist.layers[(hist.layers.step == 0) & (hist.layers.layer < 4)]
    assert np.all(hidden["frac_dead"] == 1.0)
    assert np.all(hidden["delta_rms"] == 0.0)


def test_nonfinite_counts_and_clean_stop():
    net = MLP([5, 8, 8, 1], activation="relu", loss="mse", seed=0)
    X, Y = make_problem("mse", m=16, n_out=1)
    hist = train(net, X, Y * 1e30, optimizer="sgd", lr=1.0, steps=50, batch_size=None,
                 record_every=10)  # fmt: skip
    assert hist.stopped_by == "nonfinite" and hist.diverged_step == hist.steps_done
    assert hist.steps["step"].iloc[-1] == hist.diverged_step
    assert hist.diagnosis.label == "diverged"
    assert hist.summary["diverged_step"] == hist.diverged_step
    assert np.isfinite(net.params[0][0]).all()  # the failing step was not applied

    big = MLP([5, 8, 8, 1], activation="relu", loss="mse", seed=0)
    big.set_params([(W * 1e300, b) for W, b in big.params])  # z overflows to ±inf in layer 2
    hist = train(big, X, Y, steps=5, batch_size=None)
    assert hist.diverged_step == 0 and hist.layers["nonfinite"].sum() > 0


def test_clip_fraction_counts_clipped_steps():
    net = MLP([5, 8, 1], activation="tanh", loss="bce", seed=0)
    X, Y = make_problem("bce", m=16, n_out=1)
    always = train(net, X, Y, steps=10, clip="norm", clip_value=1e-9, batch_size=None)
    never = train(net, X, Y, steps=10, clip="norm", clip_value=1e9, batch_size=None)
    assert always.summary["clip_fraction"] == 1.0 and never.summary["clip_fraction"] == 0.0


def test_nan_guard_hook_switches_the_kernel_guard():
    from bpdiag.hooks import EarlyStop, NaNGuard

    net = MLP([5, 8, 8, 1], activation="relu", loss="mse", seed=0)
    X, Y = make_problem("mse", m=16, n_out=1)
    on = train(net, X, Y * 1e30, optimizer="sgd", lr=1.0, steps=30, hooks=[NaNGuard()])
    assert on.stopped_by == "nonfinite"
    net = MLP([5, 8, 8, 1], activation="relu", loss="mse", seed=0)
    off = train(
        net, X, Y * 1e30, optimizer="sgd", lr=1.0, steps=30, hooks=[NaNGuard(enabled=False)]
    )
    assert off.stopped_by is None and off.steps_done == 30 and off.diverged_step >= 0
    net = MLP([5, 8, 1], activation="tanh", loss="bce", seed=0)
    Xb, Yb = make_problem("bce", m=16, n_out=1)
    early = train(net, Xb, Yb, steps=10_000, lr=0.05, hooks=[EarlyStop(0.6)])
    assert early.stopped_by == "EarlyStop" and early.steps_done < 10_000


def test_float32_norms_of_tiny_gradients_are_taken_in_float64():
    """A float32 gradient of ~1e-24 has a norm of ~1e-24: its squares (~1e-48) are below
    float32's range, so they are taken in float64, as the records promise."""
    net = MLP([5, 16, 16, 1], activation="tanh", loss="mse", dtype="float32", seed=0)
    params = net.params
    params[-1] = (params[-1][0] * np.float32(1e-24), params[-1][1])
    net.set_params(params)
    X, Y = make_problem("mse", m=8, n_out=1)
    _, grads = net.loss_and_grads(X, Y)
    hist = train(net, X, Y, optimizer="sgd", lr=1e-3, steps=1, batch_size=None)
    layers = hist.layers.query("step == 0")
    want = [np.linalg.norm(dW.astype(np.float64)) for dW, _ in grads]
    assert 1e-26 < want[0] < 1e-22
    assert layers["grad_norm_W"].to_numpy() == pytest.approx(want, rel=1e-6)
    assert np.all(layers["delta_rms"].to_numpy()[:2] > 1e-26)


@pytest.mark.parametrize(
    ("activation", "norm", "residual", "optimizer", "clip", "c"),
    [
        ("relu", "batchnorm", False, "adam", "norm", 0.05),
        ("tanh", "layernorm", True, "momentum", "agc", 0.05),
        ("sigmoid", "batchnorm", True, "sgd", "layer", 0.05),
        ("gelu", "none", True, "rmsprop", "value", 0.01),
    ],
)
def test_layer_records_of_normalized_and_residual_nets(activation, norm, residual, optimizer,
                                                       clip, c):  # fmt: skip
    net = MLP([5, 9, 9, 9, 2], activation=activation, loss="bce", init="he_uniform", seed=4,
              norm=norm, residual=residual, residual_scale=0.6)  # fmt: skip
    X, Y = make_problem("bce", m=20, n_out=2)
    X *= 3
    start = net.params
    hist = train(net, X, Y, optimizer=optimizer, lr=0.05, steps=3, batch_size=None, clip=clip,
                 clip_value=c, record_every=1)  # fmt: skip
    for s in range(3):
        params, _ = ref.train_net(start, X, Y, activation, "bce", norm, residual, 0.6, optimizer,
                                  0.05, s, clip, c)  # fmt: skip
        after, _ = ref.train_net(start, X, Y, activation, "bce", norm, residual, 0.6, optimizer,
                                 0.05, s + 1, clip, c)  # fmt: skip
        expected = ref.layer_stats_net(params, after, X, Y, activation, "bce", clip, c, norm,
                                       residual, 0.6)  # fmt: skip
        got = hist.layers[hist.layers.step == s]
        for l, row in enumerate(expected):
            for col in LAYER_COLUMNS:
                value = got[col].iloc[l]
                # under BatchNorm ∂L/∂b_l is 0 but for rounding (~1e-18 here)
                noise = 1e-15 if col == "grad_norm_b" and norm == "batchnorm" and l < 3 else 1e-300
                if np.isnan(row[col]):
                    assert np.isnan(value), (s, l + 1, col)
                else:
                    assert value == pytest.approx(row[col], rel=1e-10, abs=noise), (s, l + 1, col)


@pytest.mark.parametrize(
    ("loss", "activation", "norm", "residual", "threads"),
    [
        ("ce", "tanh", "none", False, 1),
        ("mse", "relu", "none", False, 2),
        ("bce", "elu", "layernorm", True, 1),
        ("ce", "selu", "none", True, 1),
    ],
)
def test_per_sample_gradient_statistics_of_a_minibatch(loss, activation, norm, residual, threads):
    """E‖g_i‖², B_simple and the SNR of each layer and in total equal those of the per-sample
    gradients computed one sample at a time, on the rows of the step's minibatch (the two-core
    passes leave the same δ behind)."""
    X, Y = make_problem(loss, m=24, n_out=3)
    net = MLP([5, 16, 16, 16, 3], activation=activation, loss=loss, init="he_normal", seed=2,
              norm=norm, residual=residual)  # fmt: skip
    params = net.params
    hist = train(net, X, Y, optimizer="sgd", lr=0.1, steps=1, batch_size=10, shuffle=False,
                 threads=threads)  # fmt: skip
    layers, totals = ref.sample_stats(params, X[:10], Y[:10], activation, loss, norm, residual,
                                      1.0)  # fmt: skip
    got = hist.layers[hist.layers.step == 0]
    for col, i in (("sample_grad_sq", 0), ("noise_scale", 1), ("grad_snr", 2)):
        assert list(got[col]) == pytest.approx([r[i] for r in layers], rel=1e-10), col
    step = hist.steps.iloc[0]
    got_totals = step[["sample_grad_sq_total", "noise_scale_total", "grad_snr_total"]]
    assert list(got_totals) == pytest.approx(totals, rel=1e-10)
    assert step["noise_scale_total"] * step["grad_snr_total"] == pytest.approx(10)


def test_per_sample_statistics_of_batchnorm_nets_are_nan_and_one_sample_has_no_noise():
    X, Y = make_problem("bce", m=8, n_out=1)
    hist = train(MLP([5, 6, 6, 1], norm="batchnorm"), X, Y, steps=1, batch_size=None)
    assert hist.layers["noise_scale"].isna().all() and hist.steps["grad_snr_total"].isna().all()
    hist = train(MLP([5, 6, 6, 1]), X[:1], Y[:1], steps=1)  # one sample: it is the mean
    assert (hist.layers["noise_scale"] == 0).all() and np.isinf(hist.steps["grad_snr_total"]).all()
