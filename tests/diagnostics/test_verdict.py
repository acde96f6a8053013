"""The diagnosis rule on the canonical cases, and its evidence and thresholds."""

import math

import numpy as np
import pytest

from bpdiag import MLP, Thresholds, data, diagnose, train

WIDTH = 128


@pytest.fixture(scope="module")
def spirals():
    return data.load("spirals", seed=0)


def _run(ds, activation, init, lr=0.01, bias=None, depth=20, steps=100):
    net = MLP(
        [2] + [WIDTH] * (depth - 1) + [1], activation=activation, loss="bce", init=init, seed=0
    )
    if bias is not None:
        net.set_params([(W, np.full_like(b, bias)) for W, b in net.params])
    return train(net, ds.X_train, ds.Y_train, optimizer="sgd", lr=lr, steps=steps, batch_size=64)


@pytest.mark.parametrize(
    ("activation", "init", "labels"),
    [
        ("sigmoid", "xavier_normal", {"vanishing"}),
        ("relu", "he_normal", {"healthy"}),
        ("tanh", f"uniform_{1 / math.sqrt(WIDTH)}", {"vanishing"}),
        ("relu", f"normal_{2 * math.sqrt(2 / WIDTH)}", {"exploding", "diverged"}),
    ],
)
def test_canonical_cases(spirals, activation, init, labels):
    hist = _run(spirals, activation, init)
    assert hist.diagnosis.label in labels, hist.diagnosis.reason


def test_large_learning_rate_diverges_with_the_step(spirals):
    hist = _run(spirals, "relu", "he_normal", lr=50.0)
    d = hist.diagnosis
    assert d.label == "diverged" and d.evidence["diverged_step"] == hist.diverged_step >= 0
    assert str(hist.diverged_step) in d.reason


def test_negative_biases_kill_relu_units(spirals):
    hist = _run(spirals, "relu", "he_normal", bias=-5.0)
    assert hist.diagnosis.label == "dead"
    assert hist.diagnosis.evidence["dead_fraction"] > 0.99


def test_evidence_sets_measurement_beside_theory(spirals):
    hist = _run(spirals, "sigmoid", "xavier_normal", steps=20)
    ev = hist.diagnosis.evidence
    assert abs(math.log(ev["grad_ratio_first_last"] / ev["grad_ratio_first_last_theory"])) < 0.4
    assert abs(math.log(ev["decay_per_layer"] / ev["decay_per_layer_theory"])) < 0.05
    assert 1 <= ev["first_layer_below"] < 20
    assert ev["chi1_theory"] < 1 and ev["depth_scale_theory"] > 0
    assert set(hist.summary) >= {
        "final_loss", "final_accuracy", "grad_ratio_first_last", "grad_ratio_first_last_W",
        "decay_per_layer", "chi1_theory", "decay_per_layer_theory", "depth_scale_theory",
        "clip_fraction", "dead_fraction", "saturated_fraction", "diverged_step",
        "train_seconds", "steps_per_second",
    }  # fmt: skip
    assert all(isinstance(v, float) for v in hist.summary.values())


def test_thresholds_can_be_overridden(spirals):
    hist = _run(spirals, "sigmoid", "xavier_normal", steps=10)
    assert diagnose(hist, vanishing_ratio=1e-20).label == "healthy"
    assert (
        diagnose(hist, Thresholds(vanishing_ratio=1e-20, exploding_ratio=1e-15)).label
        == "exploding"
    )
    with pytest.raises(ValueError, match=r"unknown threshold\(s\) \['vanish'\]"):
        diagnose(hist, vanish=1.0)


def test_test_accuracy_in_summary(spirals):
    net = MLP([2, 16, 1], loss="bce")
    hist = train(net, spirals.X_train, spirals.Y_train, steps=5,
                 eval_data=(spirals.X_test, spirals.Y_test))  # fmt: skip
    assert 0 <= hist.summary["test_accuracy"] <= 1


def test_an_error_signal_that_dies_out_is_vanishing_and_says_so(spirals):
    """A dead hidden layer near the top of a healthy ReLU net: δ below it is exactly 0, so the ratio the
    verdict reads is 0 (its log10 would be −inf) and the reason says that in words."""
    net = MLP([2] + [WIDTH] * 19 + [1], activation="relu", loss="bce", init="he_normal", seed=0)
    net.set_params([(W, np.full_like(b, -50.0) if i == 17 else b)
                    for i, (W, b) in enumerate(net.params)])  # fmt: skip
    hist = train(net, spirals.X_train, spirals.Y_train, optimizer="sgd", lr=0.01, steps=40,
                 batch_size=64)  # fmt: skip
    d = hist.diagnosis
    assert d.evidence["delta_ratio_median"] == 0.0
    assert d.label == "vanishing" and "exactly 0" in d.reason, d.reason
