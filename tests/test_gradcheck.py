"""bpdiag.gradcheck finds agreement on a correct net and the error on a broken gradient."""

import numpy as np
import pytest
from problems import make_problem

from bpdiag import MLP
from bpdiag.gradcheck import gradcheck


def test_agrees_and_leaves_the_net_unchanged():
    net = MLP([5, 7, 6, 3], activation="selu", loss="ce", init="lecun_normal", seed=1)
    X, Y = make_problem("ce")
    before = net.params
    table = gradcheck(net, X, Y, per_layer=10)
    assert (
        list(table["layer"]) == [1, 2, 3]
        and (table["rel_error"] < 1e-6).all()
        and table["ok"].all()
    )
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(before, net.params, strict=True))


def test_detects_a_wrong_gradient(monkeypatch):
    net = MLP([5, 6, 3], activation="tanh", loss="bce", seed=0)
    X, Y = make_problem("bce")
    real = MLP.loss_and_grads

    def broken(self, X, Y):
        loss, grads = real(self, X, Y)
        return loss, [(dW * 1.01, db) for dW, db in grads]

    monkeypatch.setattr(MLP, "loss_and_grads", broken)
    table = gradcheck(net, X, Y)
    assert (table["rel_error"] > 1e-3).any() and not table["ok"].all()


def test_vanishing_gradients_below_the_fd_floor_are_not_a_mismatch():
    net = MLP([5] + [16] * 7 + [2], activation="sigmoid", loss="bce", init="xavier_normal", seed=0)
    X, Y = make_problem("bce", m=8, n_out=2)
    table = gradcheck(net, X, Y)
    assert table["ok"].all() and table["max_abs_error"].iloc[0] < table["fd_floor"].iloc[0]


def test_needs_float64():
    with pytest.raises(ValueError, match="float64"):
        gradcheck(MLP([2, 1], dtype="float32"), np.zeros((2, 2)), np.zeros((2, 1)))


def test_agrees_on_normalized_and_residual_nets():
    for norm in ("batchnorm", "layernorm"):
        net = MLP([5, 7, 7, 3], activation="gelu", loss="ce", seed=2, norm=norm, residual=True)
        X, Y = make_problem("ce")
        table = gradcheck(net, X, Y, per_layer=30)
        assert table["ok"].all() and table["checked"].iloc[0] == 30
