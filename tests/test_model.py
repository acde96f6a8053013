"""MLP gradients against the seed's equations (tests/reference.py) and finite differences."""

import numpy as np
import pytest
import reference as ref
from problems import ACTIVATION_NAMES, LOSS_NAMES, make_problem

from bpdiag import MLP


def _net(activation, loss, out_act=None, sizes=(5, 8, 6, 3), **kw):
    net = MLP(list(sizes), activation=activation, loss=loss, output_activation=out_act,
              init="xavier_normal", seed=3, **kw)  # fmt: skip
    rng = np.random.default_rng(1)  # non-zero biases so their gradients are exercised
    net.set_params([(W, rng.normal(0, 0.3, size=b.shape)) for W, b in net.params])
    return net


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_grads_match_seed_reference(activation, loss):
    net = _net(activation, loss)
    X, Y = make_problem(loss)
    value, grads = net.loss_and_grads(X, Y)
    ref_value, ref_grads = ref.loss_and_grads(net.params, X, Y, activation, loss)
    assert value == pytest.approx(ref_value, rel=1e-12)
    for (dW, db), (rW, rb) in zip(grads, ref_grads, strict=True):
        assert ref.rel_err(dW, rW) < 1e-10
        assert ref.rel_err(db, rb) < 1e-10


@pytest.mark.parametrize("out_act", ["sigmoid", "tanh", "linear"])
def test_mse_with_output_activation_matches_reference(out_act):
    net = _net("relu", "mse", out_act)
    X, Y = make_problem("mse")
    value, grads = net.loss_and_grads(X, Y)
    ref_value, ref_grads = ref.loss_and_grads(net.params, X, Y, "relu", "mse", out_act)
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert ref.rel_err(grads, ref_grads) < 1e-10


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_grads_match_finite_differences(activation, loss):
    net = _net(activation, loss)
    X, Y = make_problem(loss)
    _, grads = net.loss_and_grads(X, Y)
    theta0, h = ref.flatten(net.params), 1e-6

    def loss_at(theta):
        net.set_params(ref.unflatten(theta, net.params))
        return net.loss_and_grads(X, Y)[0]

    numeric = np.array([
        (loss_at(theta0 + h * e) - loss_at(theta0 - h * e)) / (2 * h) for e in np.eye(theta0.size)
    ])  # fmt: skip
    analytic = ref.flatten(grads)
    assert np.linalg.norm(analytic - numeric) / np.linalg.norm(analytic) < 1e-6


def test_bce_is_stable_for_large_logits():
    net = MLP([1, 1], activation="linear", loss="bce", seed=0)
    net.set_params([(np.array([[1.0]]), np.array([0.0]))])
    X = np.array([[800.0], [-800.0]])
    value, grads = net.loss_and_grads(X, np.array([[0.0], [1.0]]))
    assert value == pytest.approx(800.0)  # log(1 + e^800) without overflow
    assert np.all(np.isfinite(ref.flatten(grads)))


def test_forward_outputs_probabilities():
    X, _ = make_problem("ce")
    ce, bce = _net("tanh", "ce"), _net("tanh", "bce")
    p = ce.forward(X)
    assert p.shape == (7, 3) and np.allclose(p.sum(axis=1), 1.0)
    z = ref.logits(ce.params, X, "tanh").T
    e = np.exp(z - z.max(axis=1, keepdims=True))
    assert ref.rel_err(p, e / e.sum(axis=1, keepdims=True)) < 1e-12
    s = bce.forward(X)
    assert np.all((s > 0) & (s < 1))
    assert ref.rel_err(s, 1 / (1 + np.exp(-ref.logits(bce.params, X, "tanh").T))) < 1e-12


def test_params_layout_and_round_trip():
    net = MLP([4, 7, 2], seed=0)
    (W1, b1), (W2, b2) = net.params
    assert W1.shape == (7, 4) and b1.shape == (7,) and W2.shape == (2, 7) and b2.shape == (2,)
    assert not b1.any()
    W1[:] = 0  # params are copies: the net is unchanged
    assert net.params[0][0].any()
    new = [(W + 1, b - 1) for W, b in net.params]
    net.set_params(new)
    assert ref.rel_err(net.params, new) == 0


def test_float32_agrees_with_float64():
    X, Y = make_problem("bce")
    n64 = _net("tanh", "bce", dtype="float64")
    n32 = _net("tanh", "bce", dtype="float32")
    assert n32.params[0][0].dtype == np.float32
    l64, g64 = n64.loss_and_grads(X, Y)
    l32, g32 = n32.loss_and_grads(X, Y)
    assert l32 == pytest.approx(l64, rel=1e-5)
    assert ref.rel_err(g32, g64) < 1e-4
