"""Initializers: the variances of REFERENCE.md, orthogonality, determinism, name errors."""

import numpy as np
import pytest

from bpdiag import MLP
from bpdiag.choices.inits import INITS, PATTERNS, get_init, init_weights, weight_variance

N_OUT, N_IN = 300, 200
VARIANCE = {
    "xavier_normal": 2 / (N_IN + N_OUT),
    "xavier_uniform": 2 / (N_IN + N_OUT),
    "he_normal": 2 / N_IN,
    "he_uniform": 2 / N_IN,
    "lecun_normal": 1 / N_IN,
    "lecun_uniform": 1 / N_IN,
    "normal_0.05": 0.05**2,
    "uniform_0.3": 0.3**2 / 3,
    "orthogonal": 1 / N_IN,  # rows orthonormal (n_out > n_in: columns), entries' variance 1/n_out
    "orthogonal_1.4": 1.4**2 / N_IN,
}


def test_every_registered_init_has_a_variance_case():
    assert set(INITS) - {"zeros"} <= set(VARIANCE)
    assert {name.split("_")[0] + "_" for name in VARIANCE if name[-1].isdigit()} == set(PATTERNS)


@pytest.mark.parametrize("name", list(VARIANCE))
def test_variance(name):
    W = get_init(name)(np.random.default_rng(0), N_OUT, N_IN)
    expected = {"orthogonal": 1 / N_OUT, "orthogonal_1.4": 1.4**2 / N_OUT}.get(name, VARIANCE[name])
    assert W.shape == (N_OUT, N_IN)
    assert W.var() == pytest.approx(expected, rel=0.03)
    assert abs(W.mean()) < 0.1 * np.sqrt(expected)


@pytest.mark.parametrize("name", ["xavier_uniform", "he_uniform", "lecun_uniform", "uniform_0.3"])
def test_uniform_bounds(name):
    W = get_init(name)(np.random.default_rng(0), N_OUT, N_IN)
    bound = np.sqrt(3 * VARIANCE[name])
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.99 * bound


@pytest.mark.parametrize("shape", [(50, 30), (30, 50), (40, 40)])
def test_orthogonal(shape):
    W = get_init("orthogonal")(np.random.default_rng(1), *shape)
    small = min(shape)
    gram = W.T @ W if shape[0] > shape[1] else W @ W.T
    assert np.allclose(gram, np.eye(small), atol=1e-12)


@pytest.mark.parametrize("shape", [(50, 30), (30, 50), (40, 40)])
def test_orthogonal_with_a_gain_is_the_same_matrix_scaled(shape):
    W = get_init("orthogonal")(np.random.default_rng(1), *shape)
    scaled = get_init("orthogonal_1.5")(np.random.default_rng(1), *shape)
    assert np.array_equal(scaled, 1.5 * W)
    assert weight_variance("orthogonal_1.5", *shape) == pytest.approx(2.25 * np.mean(W**2))
    with pytest.raises(ValueError, match="orthogonal_"):
        get_init("orthogonal_x")


def test_same_seed_same_weights_in_both_dtypes():
    a = MLP([3, 5, 2], init="he_normal", seed=11)
    b = MLP([3, 5, 2], init="he_normal", seed=11, dtype="float32")
    c = MLP([3, 5, 2], init="he_normal", seed=12)
    assert np.array_equal(a.params[0][0], init_weights([3, 5, 2], "he_normal", 11)[0])
    assert np.array_equal(a.params[0][0].astype(np.float32), b.params[0][0])
    assert not np.array_equal(a.params[0][0], c.params[0][0])
    assert not any(bias.any() for _, bias in a.params)


def test_zeros():
    assert not MLP([3, 4, 1], init="zeros").params[0][0].any()


@pytest.mark.parametrize("bad", ["glorot", "normal_", "normal_-1", "uniform_x", "he"])
def test_unknown_or_malformed_names(bad):
    with pytest.raises(ValueError, match="init"):
        get_init(bad)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"xavier_normal.*normal_<std>"):
        get_init("glorot")
