"""The multi-threaded step: the same training as on one thread, its pieces, and its switches."""

import importlib
import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from problems import make_problem
from threadpoolctl import threadpool_info

from bpdiag import MLP, train
from bpdiag._core.codes import BATCHNORM, LAYERNORM, NO_NORM
from bpdiag._core.parallel import pieces
from bpdiag._core.structs import make_net, n_params

train_module = importlib.import_module("bpdiag.training")
two_threads = pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads"
)

CASES = [  # activation, loss, optimizer, its options, clip, clip value
    ("tanh", "bce", "adam", {}, "norm", 0.1),
    ("relu", "ce", "sgd", {"momentum": 0.9, "nesterov": True}, "value", 0.02),
    ("sigmoid", "mse", "rmsprop", {"centered": True, "momentum": 0.5}, "layer", 0.08),
    ("gelu", "bce", "adamw", {"weight_decay": 0.1}, "agc", 0.05),
    ("elu", "mse", "sgd", {}, "none", None),
]


@given(widths=st.lists(st.integers(1, 70), min_size=2, max_size=6), size=st.integers(1, 300),
       norm=st.sampled_from([NO_NORM, BATCHNORM, LAYERNORM]))  # fmt: skip
def test_pieces_cover_theta_once_in_order(widths, size, norm):
    lay = make_net(widths, 0, 0, 0, norm)
    lo, hi, seg = pieces(lay, size)
    assert lo[0] == 0 and hi[-1] == n_params(lay)
    assert np.all(lo[1:] == hi[:-1]) and np.all(hi > lo)
    for k in range(len(widths) - 1):
        w = seg == 3 * k
        assert lo[w][0] == lay.w_off[k] and hi[w][-1] == lay.b_off[k]
        assert np.all(hi[w] - lo[w] <= size)
        assert lo[seg == 3 * k + 1][0] == lay.b_off[k]
        affine = seg == 3 * k + 2
        assert affine.any() == (lay.g_off[k] >= 0)
        if affine.any():
            assert (
                lo[affine][0] == lay.g_off[k] and hi[affine][0] == lay.g_off[k] + 2 * widths[k + 1]
            )


@two_threads
@pytest.mark.parametrize(("activation", "loss", "optimizer", "options", "clip", "c"), CASES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_threads_train_as_one(activation, loss, optimizer, options, clip, c, dtype):
    """The same training to rounding: BLAS may round a block of rows differently from the whole
    batch, and records add their pieces in another order. 37 rows in batches of 12 end each
    epoch with a single row, which the forward pass splits into an empty block and a full one."""
    X, Y = make_problem(loss, m=37, n_in=9, n_out=3, seed=1)
    runs = []
    for threads in (1, 2):
        net = MLP([9, 40, 33, 3], activation=activation, loss=loss, seed=3, dtype=dtype)
        hist = train(net, X, Y, optimizer=optimizer, lr=0.02, steps=25, batch_size=12, clip=clip,
                     clip_value=c, record_every=1, threads=threads, **options)  # fmt: skip
        runs.append((net, hist))
    (one, h1), (two, h2) = runs
    # float32: 25 steps of centered RMSprop amplify an ulp to ~1e-5 (as in any float32 run)
    rtol, atol = (1e-11, 1e-14) if dtype == "float64" else (1e-3, 1e-5)
    np.testing.assert_allclose(two.theta, one.theta, rtol=rtol, atol=atol)
    for a, b in ((h1.steps, h2.steps), (h1.layers, h2.layers)):
        np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=rtol, atol=atol)


@two_threads
@pytest.mark.parametrize(("activation", "loss", "residual", "clip"), [
    ("tanh", "bce", False, "norm"), ("relu", "mse", True, "layer"), ("gelu", "ce", True, "value"),
    ("sigmoid", "bce", True, "agc"),
])  # fmt: skip
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batchnorm_nets_train_on_two_threads_as_on_one(activation, loss, residual, clip, dtype):
    """BatchNorm's statistics couple the rows, so its two-core passes meet at every layer to
    merge the blocks' statistics and sums (``bpdiag._core.bnpasses``): the same training to
    rounding, running statistics included, within the project's 1e-10 in float64. 36 rows in
    batches of 12: a batch of two or three rows would make BatchNorm's δ a difference of nearly
    equal terms (exactly 0 for two rows), its rounding amplified by orders of magnitude whatever
    adds it up. In float32 the net has no one-unit layer: BatchNorm over a single unit amplifies
    float32 rounding ~1e3× (measured over 20 steps: one thread alone strays from the float64 run
    by up to 6e-4, two threads by up to 6e-3), which would test the conditioning, not the
    passes."""
    net = MLP([64] + [128] * 19 + [1], norm="batchnorm", residual=True)
    assert train_module._threads(None, net, 128) == numba.get_num_threads()
    X, Y = make_problem(loss, m=36, n_in=9, n_out=3, seed=1)
    runs = []
    for threads in (1, 2):
        net = MLP([9, 40, 40, 1 if dtype == "float64" else 40, 40, 40, 3], activation=activation,
                  loss=loss, seed=3, norm="batchnorm", residual=residual, dtype=dtype)  # fmt: skip
        hist = train(net, X, Y, optimizer="sgd", lr=0.05, momentum=0.9, steps=20, batch_size=12,
                     clip=clip, clip_value=0.5, record_every=1, threads=threads)  # fmt: skip
        runs.append((net, hist))
    (one, h1), (two, h2) = runs
    rtol, atol = (1e-10, 1e-12) if dtype == "float64" else (1e-4, 1e-6)  # float32 seen: 1e-6
    np.testing.assert_allclose(two.theta, one.theta, rtol=rtol, atol=atol)
    np.testing.assert_allclose(two.running, one.running, rtol=rtol, atol=atol)
    for a, b in ((h1.steps, h2.steps), (h1.layers, h2.layers)):
        np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=rtol, atol=atol)


@two_threads
@pytest.mark.parametrize(("norm", "residual", "activation", "loss", "clip"), [
    ("layernorm", False, "tanh", "bce", "norm"), ("layernorm", True, "relu", "ce", "layer"),
    ("none", True, "gelu", "mse", "agc"), ("layernorm", True, "sigmoid", "mse", "value"),
])  # fmt: skip
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layernorm_and_residual_nets_train_on_two_threads_as_on_one(norm, residual, activation,
                                                                     loss, clip, dtype):  # fmt: skip
    """LayerNorm and skips act row by row, so their nets take the two-core passes too: the
    same training to rounding, γ and β (and their gradients' norms) included; 38 rows in
    batches of 12 end each epoch with two rows, one per thread."""
    net = MLP([64] + [128] * 19 + [1], norm=norm, residual=residual)
    assert train_module._threads(None, net, 128) == numba.get_num_threads()
    X, Y = make_problem(loss, m=38, n_in=9, n_out=3, seed=1)
    runs = []
    for threads in (1, 2):
        net = MLP([9, 40, 40, 40, 3], activation=activation, loss=loss, seed=3, norm=norm,
                  residual=residual, dtype=dtype)  # fmt: skip
        hist = train(net, X, Y, optimizer="adam", lr=0.01, steps=20, batch_size=12, clip=clip,
                     clip_value=0.5, record_every=1, threads=threads)  # fmt: skip
        runs.append((net, hist))
    (one, h1), (two, h2) = runs
    rtol, atol = (1e-11, 1e-14) if dtype == "float64" else (1e-3, 1e-5)
    np.testing.assert_allclose(two.theta, one.theta, rtol=rtol, atol=atol)
    for a, b in ((h1.steps, h2.steps), (h1.layers, h2.layers)):
        np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=rtol, atol=atol)


@two_threads
def test_threads_and_blas_are_restored_after_training():
    X, Y = make_problem("bce", m=16)
    numba_before, blas_before = numba.get_num_threads(), threadpool_info()
    train(MLP([5, 8, 3]), X, Y, steps=3, threads=2)
    assert numba.get_num_threads() == numba_before
    assert threadpool_info() == blas_before


def test_threads_default_by_layer_size():
    tiny, small = MLP([32] + [32] * 5 + [1]), MLP([32] + [64] * 9 + [1])
    medium, huge = MLP([64] + [128] * 19 + [1]), MLP([512] + [1024] * 7 + [1])
    assert train_module._threads(None, tiny, 16) == 1  # 14K multiply-adds a layer
    assert train_module._threads(None, small, 16) == numba.get_num_threads()  # 56K
    assert train_module._threads(None, small, 64) == numba.get_num_threads()  # 223K
    assert train_module._threads(None, medium, 128) == numba.get_num_threads()  # ≈ 2^21
    assert train_module._threads(None, huge, 512) == numba.get_num_threads()  # ≈ 2^29


@two_threads
def test_batchnorm_nets_take_two_threads_from_larger_layers():
    """Its threads meet twice a layer, which pays from more multiply-adds a layer."""
    deep, small = (
        MLP([32] * 100 + [1], norm="batchnorm"),
        MLP([32] + [64] * 9 + [1], norm="batchnorm"),
    )
    assert train_module._threads(None, deep, 32) == 1  # 32K multiply-adds a layer
    assert train_module._threads(None, small, 32) == 1  # 112K
    assert train_module._threads(None, small, 64) == numba.get_num_threads()  # 223K
    assert train_module._threads(2, deep, 32) == 2  # asked for


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_threads_are_refused(bad):
    X, Y = make_problem("bce", m=8)
    with pytest.raises(ValueError, match="threads must be None or a positive integer"):
        train(MLP([5, 4, 3]), X, Y, steps=1, threads=bad)


def test_more_threads_than_numba_has_are_refused():
    X, Y = make_problem("bce", m=8)
    too_many = numba.config.NUMBA_NUM_THREADS + 1
    with pytest.raises(ValueError, match=f"at most {too_many - 1}"):
        train(MLP([5, 4, 3]), X, Y, steps=1, threads=too_many)


THREE_THREADS = """
import json, numpy as np
from bpdiag import MLP, train
rng = np.random.default_rng(4)
X = rng.normal(size=(29, 7)); Y = (rng.uniform(size=(29, 2)) > 0.5).astype(float)
out = []
for norm, optimizer in (("none", "adam"), ("batchnorm", "sgd")):
    for threads in (1, 3):
        net = MLP([7, 23, 5, 2], activation="tanh", seed=2, norm=norm)
        hist = train(net, X, Y, optimizer=optimizer, lr=0.01, steps=12, batch_size=10,
                     clip="norm", clip_value=0.5, record_every=1, threads=threads)
        out.append([net.theta.tolist(), hist.layers.to_numpy(float).tolist()])
print(json.dumps(out))
"""


def test_three_threads_train_as_one():
    """Three blocks of rows (and three shares of every ∂L/∂W_l, one of them empty for the 2-unit
    output layer), in a process with three Numba threads on however many cores there are;
    batches of 10, 10 and 9 rows; a BatchNorm net's three blocks of rows too."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "3"}
    res = subprocess.run([sys.executable, "-c", THREE_THREADS], env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.replace("NaN", "null"))
    for (theta1, layers1), (theta3, layers3) in (out[:2], out[2:]):
        np.testing.assert_allclose(theta3, theta1, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(np.array(layers3, float), np.array(layers1, float),
                                   rtol=1e-11, atol=1e-14)  # fmt: skip
