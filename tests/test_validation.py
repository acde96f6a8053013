"""Bad input gets a clear ValueError/TypeError naming the field, never a Numba traceback."""

import numpy as np
import pytest
from problems import make_problem

from bpdiag import MLP, train


@pytest.fixture
def bce():
    X, Y = make_problem("bce", n_out=1)
    return MLP([5, 4, 1], loss="bce"), X, Y


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "swish"}, r"unknown activation 'swish'; valid: .*gelu.*tanh"),
        ({"loss": "hinge"}, r"unknown loss 'hinge'; valid: bce, ce, mse"),
        ({"init": "kaiming"}, r"unknown init 'kaiming'"),
        ({"dtype": "float16"}, r"dtype must be one of \['float32', 'float64'\]"),
        ({"loss": "bce", "output_activation": "tanh"}, r"output_activation 'tanh' does not go"),
        ({"loss": "mse", "output_activation": "soft"}, r"unknown output_activation 'soft'"),
        ({"sizes": [5]}, r"sizes needs at least"),
        ({"sizes": [5, 0, 1]}, r"sizes\[1\] must be a positive integer"),
        ({"sizes": [5, 2.5, 1]}, r"sizes\[1\]"),
        ({"sizes": [5, 1], "loss": "ce"}, r"at least 2 outputs"),
        ({"seed": -1}, r"seed must be a non-negative integer"),
    ],
)
def test_constructor_errors(kwargs, match):
    kwargs = {"sizes": [5, 4, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_sizes_must_be_a_list():
    with pytest.raises(TypeError, match="sizes must be a list"):
        MLP("5,4,1")


def test_activation_name_must_be_a_string():
    with pytest.raises(TypeError, match="activation must be a string"):
        MLP([2, 1], activation=3)


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (np.zeros((7, 4)), r"X must have shape \(m, 5\), got \(7, 4\)"),
        (np.zeros(5), r"X must have 2 dimensions"),
        (np.zeros((0, 5)), r"X is empty"),
        (np.full((7, 5), np.nan), r"X contains NaN or Inf \(first at index \(0, 0\)\)"),
        (
            np.array([[1.0, 2, 3, np.inf, 5]] * 7),
            r"X contains NaN or Inf \(first at index \(0, 3\)\)",
        ),
    ],
)
def test_bad_X(bce, X, match):
    net, _, Y = bce
    with pytest.raises(ValueError, match=match):
        net.loss_and_grads(X, Y)
    with pytest.raises(ValueError, match=match):
        train(net, X, Y, steps=1)


@pytest.mark.parametrize("X", [np.array([["a"] * 5] * 7), np.ones((7, 5), complex),
                               np.ones((7, 5), bool)])  # fmt: skip
def test_X_of_wrong_dtype(bce, X):
    net, _, Y = bce
    with pytest.raises(TypeError, match="X must hold real numbers"):
        net.forward(X)


def test_bad_targets():
    X, _ = make_problem("ce")
    ce = MLP([5, 4, 3], loss="ce")
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\)"):
        ce.loss_and_grads(X, np.array([0, 1, 2, 3, 0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must be integers"):
        ce.loss_and_grads(X, np.array([0, 1, 2, 0.5, 0, 1, 2]))
    with pytest.raises(ValueError, match=r"integer labels of shape \(7,\)"):
        ce.loss_and_grads(X, np.zeros((7, 3)))
    bce = MLP([5, 4, 1], loss="bce")
    with pytest.raises(ValueError, match=r"targets for loss 'bce' must be in \[0, 1\]"):
        bce.loss_and_grads(X, np.full(7, 2.0))
    with pytest.raises(ValueError, match=r"Y must have shape \(7, 1\), got \(6, 1\)"):
        bce.loss_and_grads(X, np.zeros((6, 1)))
    with pytest.raises(ValueError, match=r"Y contains NaN"):
        bce.loss_and_grads(X, np.full(7, np.nan))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "adagrad"}, r"unknown optimizer 'adagrad'; valid: adam, adamw, momentum"),
        ({"lr": 0}, r"lr must be a positive number, got 0"),
        ({"lr": -0.1}, r"lr must be in"),
        ({"lr": float("nan")}, r"lr must be in"),
        ({"steps": 0}, r"steps must be a positive integer, got 0"),
        ({"steps": 2.5}, r"steps must be a positive integer"),
        ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        ({"record_every": -1}, r"record_every must be a positive integer"),
        ({"clip": "global"}, r"unknown clip 'global'; valid: agc, layer, none, norm, value"),
        ({"clip": "norm"}, r"clip='norm' needs clip_value"),
        ({"clip": "agc", "clip_value": 0}, r"clip_value must be a positive finite number"),
        (
            {"optimizer": "adam", "momentum": 0.9},
            r"unknown option\(s\) \['momentum'\] for optimizer 'adam'",
        ),
        ({"optimizer": "adam", "betas": (0.9, 1.0)}, r"betas must be in \[0, 1\)"),
        ({"optimizer": "sgd", "nesterov": True}, r"nesterov needs momentum > 0"),
        ({"optimizer": "rmsprop", "alpha": 1.5}, r"alpha must be in \[0.0, 1.0\]"),
        ({"optimizer": "sgd", "weight_decay": -1}, r"weight_decay must be in"),
        ({"seed": -2}, r"seed must be a non-negative integer"),
    ],
)
def test_train_argument_errors(bce, kwargs, match):
    net, X, Y = bce
    before = net.params
    with pytest.raises(ValueError, match=match):
        train(net, X, Y, **{"steps": 1, **kwargs})
    assert np.array_equal(net.params[0][0], before[0][0])


def test_train_type_errors(bce):
    net, X, Y = bce
    with pytest.raises(TypeError, match="net must be a bpdiag.MLP"):
        train("net", X, Y)
    with pytest.raises(TypeError, match="betas must be a pair"):
        train(net, X, Y, betas=0.9)
    with pytest.raises(TypeError, match="hooks must be callables"):
        train(net, X, Y, hooks=[1])


def test_set_params_errors():
    net = MLP([3, 2, 1])
    with pytest.raises(ValueError, match=r"params must have 2 \(W, b\) pairs, got 1"):
        net.set_params(net.params[:1])
    bad = net.params
    bad[1] = (bad[1][0].T, bad[1][1])
    with pytest.raises(ValueError, match=r"params\[1\] must be W \(1, 2\) and b \(1,\)"):
        net.set_params(bad)
    bad = net.params
    bad[0][0][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"params\[0\]\[0\] \(W\) contains NaN or Inf"):
        net.set_params(bad)
