"""The diagnosis rule on the canonical cases, and its evidence and thresholds."""

import math

import numpy as np
import pytest

from bpdiag import MLP, Thresholds, data, diagnose, train
from bpdiag.diagnostics.verdict import flags, headline
from bpdiag.diagnostics.verdict import phases as phase_list

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


# --- the timeline and the flags -------------------------------------------------------------


def test_phases_start_at_init_and_change_only_where_a_label_holds():
    th = Thresholds()
    steps = np.arange(0, 200, 10)
    ratios = np.array([330.0] + [1.0] * 8 + [500.0] + [1.0] * 10)  # one exploding blip at 90
    got = phase_list(steps, ratios, th)
    assert [(p.label, p.start, p.end) for p in got] == [("exploding", 0, 0), ("healthy", 10, 190)]
    assert got[1].delta_ratio_median == 1.0
    assert headline(got) == "exploding at init, healthy from step 10"
    assert headline(phase_list(steps, np.ones(20), th)) == "healthy throughout"
    late = phase_list(steps, np.r_[np.ones(15), np.full(5, 1e-3)], th)
    assert headline(late) == "healthy at init, vanishing from step 150"
    assert [p.label for p in phase_list(steps, np.r_[np.ones(19), 1e-3], th)] == ["healthy"]


def test_a_divergence_ends_the_timeline():
    got = phase_list(np.arange(0, 100, 10), np.ones(10), Thresholds(), diverged_step=55)
    assert [(p.label, p.start) for p in got] == [("healthy", 0), ("diverged", 55)]
    assert headline(got) == "healthy at init, diverged at step 55"


def test_a_ratio_near_a_threshold_is_flagged_borderline():
    ev = {"dead_fraction": 0.0, "saturated_fraction": math.nan, "delta_ratio_median": 0.0106}
    th = Thresholds()
    assert "vanishing threshold 0.01" in flags(ev, 0.0, th)["borderline"]
    assert "borderline" in flags({**ev, "delta_ratio_median": 0.0096}, 0.0, th)
    assert "borderline" not in flags({**ev, "delta_ratio_median": 0.05}, 0.0, th)
    assert "borderline" in flags({**ev, "delta_ratio_median": 0.05}, 0.0,
                                 Thresholds(borderline_factor=10.0))  # fmt: skip
    assert set(flags({**ev, "dead_fraction": 0.6}, 0.9, th)) == {"dead", "clipping", "borderline"}


def test_an_exploding_start_is_in_the_headline_of_a_net_that_recovers(spirals):
    """The default sweep's tanh net with σ_w² = 4 at depth 30: δ₁/δ_L is in the hundreds at init
    and the net recovers; the primary label is the median's, the headline names the start."""
    net = MLP([2] + [64] * 29 + [1], activation="tanh", loss="bce", init="normal_0.25", seed=0)
    hist = train(net, spirals.X_train, spirals.Y_train, optimizer="sgd", lr=0.01, steps=400,
                 batch_size=64, record_every=20)  # fmt: skip
    d = hist.diagnosis
    assert d.evidence["grad_ratio_first_last"] > 100
    assert d.headline.startswith("exploding at init, healthy from step"), d.headline
    assert d.label == "healthy" and d.timeline.startswith("exploding@0,healthy@")


def test_dead_units_do_not_override_a_net_that_trained(spirals):
    """Adam on an exploding 20-layer ReLU net fits the spirals while over half its units die:
    the label says how the gradient flowed, the flag says the units died."""
    net = MLP([2] + [64] * 19 + [1], activation="relu", loss="bce", init="normal_0.25", seed=0)
    hist = train(net, spirals.X_train, spirals.Y_train, optimizer="adam", lr=0.01, steps=2000,
                 batch_size=64, record_every=20, clip="norm", clip_value=1.0)  # fmt: skip
    d = hist.diagnosis
    assert hist.summary["final_accuracy"] > 0.9
    assert d.evidence["dead_fraction"] >= 0.5 and "dead" in d.flags
    assert d.label != "dead", d.reason
