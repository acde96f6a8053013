"""Normalization (BatchNorm, LayerNorm) and skip connections against the plain-NumPy reference:
gradients of every activation × loss × norm × skip, finite differences, training trajectories
of every optimizer × clipping mode, BatchNorm's running statistics and evaluation mode."""

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import ACTIVATION_NAMES, LOSS_NAMES, make_problem

from bpdiag import MLP, train
from bpdiag._core.norm import batch_statistics, merge_statistics
from bpdiag._core.structs import N_NORM, NM_ISTD, NM_MEAN, NM_VAR
from bpdiag.choices.clipping import CLIPPING
from bpdiag.choices.norms import NORMS

ALPHA = 0.7  # a residual scale that is not 1, so that a missing α shows


def _net(activation, loss, norm, residual, sizes=(5, 8, 8, 8, 3), dtype="float64", seed=3):
    net = MLP(list(sizes), activation=activation, loss=loss, norm=norm, residual=residual,
              residual_scale=ALPHA, init="xavier_normal", seed=seed, dtype=dtype)  # fmt: skip
    rng = np.random.default_rng(1)  # biases, γ and β away from 0 and 1, so their gradients show
    net.set_params([tuple(a if i == 0 else rng.normal(1.0 if i == 2 else 0.0, 0.3, size=a.shape)
                          for i, a in enumerate(group)) for group in net.params])  # fmt: skip
    return net


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_grads_match_reference(activation, loss, norm, residual):
    net = _net(activation, loss, norm, residual)
    X, Y = make_problem(loss)
    value, grads = net.loss_and_grads(X, Y)
    ref_value, ref_grads, _ = ref.loss_and_grads_net(net.params, X, Y, activation, loss, norm,
                                                     residual, ALPHA)  # fmt: skip
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert [len(g) for g in grads] == [len(g) for g in ref_grads]
    assert ref.rel_err(grads, ref_grads) < 1e-10


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
def test_grads_match_finite_differences(activation, norm, residual):
    net = _net(activation, "mse", norm, residual)
    X, Y = make_problem("mse")
    _, grads = net.loss_and_grads(X, Y)
    theta0, h = ref.flatten(net.params), 1e-6

    def loss_at(theta):
        net.set_params(ref.unflatten(theta, net.params))
        return net.loss_and_grads(X, Y)[0]

    numeric = np.array([(loss_at(theta0 + h * e) - loss_at(theta0 - h * e)) / (2 * h)
                        for e in np.eye(theta0.size)])  # fmt: skip
    analytic = ref.flatten(grads)
    assert np.linalg.norm(analytic - numeric) / np.linalg.norm(analytic) < 1e-6


def test_the_layout_of_params():
    net = MLP([4, 6, 6, 6, 2], norm="batchnorm", residual=True)
    groups = net.params
    assert [len(g) for g in groups] == [4, 4, 4, 2]
    W, b, gamma, beta = groups[1]
    assert W.shape == (6, 6) and np.all(gamma == 1) and not beta.any() and not b.any()
    assert net.skips == [False, True, True, False]  # not the first, not the output layer
    assert [len(s) for s in net.running_stats] == [2, 2, 2]
    assert all(np.all(m == 0) and np.all(v == 1) for m, v in net.running_stats)
    assert MLP([4, 6, 6, 6, 2], residual=True).skips == [False, True, True, False]
    assert MLP([4, 6, 9, 9, 2], residual=True).skips == [False, False, True, False]  # 6 → 9
    assert MLP([4, 6, 6, 2], norm="layernorm").running_stats == []


OPTIMIZERS = {"sgd": {}, "momentum": {}, "nesterov": {}, "rmsprop": {}, "adam": {}, "adamw": {},
              "rmsprop+centered": {"centered": True, "momentum": 0.5},
              "adam+wd": {"weight_decay": 0.1}}  # fmt: skip
CLIPS = {"none": None, "value": 0.02, "norm": 0.1, "layer": 0.08, "agc": 0.05}


@pytest.mark.parametrize("clip", list(CLIPPING))
@pytest.mark.parametrize("opt_key", list(OPTIMIZERS))
@pytest.mark.parametrize(("norm", "residual"), [("batchnorm", False), ("layernorm", True),
                                                ("batchnorm", True)])  # fmt: skip
def test_training_matches_reference(norm, residual, opt_key, clip):
    name, options = opt_key.split("+")[0], OPTIMIZERS[opt_key]
    lr = 0.1 if name == "sgd" else 0.01
    net = _net("tanh", "bce", norm, residual)
    X, Y = make_problem("bce", m=16)
    start = net.params
    train(net, X, Y, optimizer=name, lr=lr, steps=6, batch_size=None, clip=clip,
          clip_value=CLIPS[clip], record_every=1, **options)  # fmt: skip
    expected, running = ref.train_net(start, X, Y, "tanh", "bce", norm, residual, ALPHA, name, lr,
                                      6, clip, CLIPS[clip], **options)  # fmt: skip
    assert ref.rel_err(net.params, expected) < 1e-10
    # a bias before a BatchNorm has a gradient of 0 but for rounding; Adam and RMSprop divide
    # that noise by √v + ε and step on it (~1e-11 here), which the running mean sees
    tol = 1e-9 if name in ("adam", "adamw", "rmsprop") else 1e-10
    for (m, v), (rm, rv) in zip(net.running_stats, running, strict=True):
        assert ref.rel_err(m, rm) < tol and ref.rel_err(v, rv) < 1e-10


def test_minibatches_update_the_running_statistics_and_evaluation_uses_them():
    net = _net("relu", "ce", "batchnorm", True)
    X, Y = make_problem("ce", m=30)
    start = net.params
    hist = train(net, X, Y, optimizer="momentum", lr=0.05, steps=7, batch_size=8, seed=4)
    from bpdiag.training import BatchSampler

    idx, starts = BatchSampler(30, 8, True, 4).take(7)
    batches = [idx[starts[s] : starts[s + 1]] for s in range(7)]
    expected, running = ref.train_net(start, X, Y, "relu", "ce", "batchnorm", True, ALPHA,
                                      "momentum", 0.05, 7, "none", None, batches=batches)  # fmt: skip
    assert ref.rel_err(net.params, expected) < 1e-10
    got = net.running_stats
    assert len(got) == 3 and all(ref.rel_err(g[i], r[i]) < 1e-10
                                 for g, r in zip(got, running, strict=True) for i in (0, 1))  # fmt: skip
    A, _ = ref.forward_net(net.params, X, "relu", "batchnorm", True, ALPHA, running=running)
    z = A[-1].T
    p = np.exp(z - z.max(axis=1, keepdims=True))
    assert ref.rel_err(net.forward(X), p / p.sum(axis=1, keepdims=True)) < 1e-10
    loss, _ = net.evaluate(X, Y)  # evaluation mode, as torch's model.eval()
    assert loss == pytest.approx(ref.loss_grad(z.T, Y, "ce")[0], rel=1e-10)
    assert hist.summary["final_loss"] == pytest.approx(loss, rel=1e-12)


def test_a_batch_of_one_row_is_refused_in_training():
    net = MLP([5, 4, 4, 1], norm="batchnorm")
    X, Y = make_problem("bce", m=9, n_out=1)
    with pytest.raises(ValueError, match=r"batchnorm needs at least 2 rows.*batch_size=4 with 9"):
        train(net, X, Y, steps=3, batch_size=4)  # 4 + 4 + 1
    with pytest.raises(ValueError, match="batchnorm needs at least 2 rows"):
        train(net, X, Y, steps=3, batch_size=1)
    with pytest.raises(ValueError, match="batchnorm needs at least 2 rows"):
        net.loss_and_grads(X[:1], Y[:1])
    assert net.forward(X[:1]).shape == (1, 1)  # evaluation needs no batch statistics
    train(MLP([5, 4, 4, 1], norm="layernorm"), X, Y, steps=3, batch_size=4)  # per row: fine


@pytest.mark.parametrize("kwargs", [{"norm": "groupnorm"}, {"residual_scale": 0},
                                    {"residual_scale": "inv_depth"}, {"residual": "yes"}])  # fmt: skip
def test_bad_options_are_named(kwargs):
    error = TypeError if kwargs.get("residual") == "yes" else ValueError
    with pytest.raises(error, match=next(iter(kwargs))):
        MLP([3, 4, 1], **kwargs)


def test_set_params_wants_the_gammas_and_betas():
    net = MLP([3, 4, 1], norm="layernorm")
    with pytest.raises(ValueError, match=r"params\[0\] must be \(W, b, gamma, beta\), got 2"):
        net.set_params([(np.zeros((4, 3)), np.zeros(4)), (np.zeros((1, 4)), np.zeros(1))])
    groups = net.params
    groups[0] = (*groups[0][:3], np.zeros(5))
    with pytest.raises(ValueError, match=r"params\[0\] must be W \(4, 3\) and b, gamma and beta"):
        net.set_params(groups)


def test_inv_sqrt_depth_scale():
    net = MLP([3, 8, 8, 8, 1], residual=True, residual_scale="inv_sqrt_depth")
    assert net.layout.alpha == pytest.approx(0.5)


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
def test_float32_agrees_with_float64(norm):
    X, Y = make_problem("bce")
    n64 = _net("tanh", "bce", norm, True, dtype="float64")
    n32 = _net("tanh", "bce", norm, True, dtype="float32")
    l64, g64 = n64.loss_and_grads(X, Y)
    l32, g32 = n32.loss_and_grads(X, Y)
    assert l32 == pytest.approx(l64, rel=1e-5)
    assert ref.rel_err(g32, g64) < 1e-4


@pytest.mark.parametrize(("norm", "residual"), [("batchnorm", True), ("layernorm", True)])
def test_a_reused_workspace_changes_nothing(norm, residual):
    """train() reuses its last workspace: poisoned with NaN (the h and ẑ blocks and the
    normalization statistics too), it must not leak into a run."""
    import importlib

    training = importlib.import_module("bpdiag.training")
    X, Y = make_problem("bce", m=16)
    results = []
    for poison in (False, True):
        training._spare.clear()
        if poison:
            train(_net("tanh", "bce", norm, residual), X, Y, steps=3, batch_size=8)
            (ws,) = training._spare.values()
            for buf in (*ws.buffers, ws.state):
                if buf.dtype.kind == "f":
                    buf.fill(np.nan)
        net = _net("tanh", "bce", norm, residual)
        hist = train(net, X, Y, optimizer="adam", lr=0.01, steps=12, batch_size=8, record_every=2)
        results.append((net.theta.copy(), net.running.copy(), hist.layers.to_numpy()))
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a, b, equal_nan=True)


@settings(deadline=None)  # the first example loads the kernels from Numba's cache
@given(m=st.integers(2, 40), n=st.integers(1, 9), cuts=st.lists(st.integers(0, 40), max_size=3),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), shift=st.sampled_from([0.0, 1e4]))  # fmt: skip
def test_merged_block_statistics_are_the_batch_statistics(m, n, cuts, scale, shift):
    """BatchNorm's two-core forward takes each block of rows' mean and variance and merges them
    (``norm.merge_statistics``): the whole batch's, to rounding, whatever the blocks (empty ones
    included) and however far the mean lies from 0 against the spread."""
    rng = np.random.default_rng(m * 100 + n)
    Z = shift + scale * rng.normal(size=(m, n))
    b = rng.normal(size=n)
    edges = [0, *sorted(min(c, m) for c in cuts), m]
    counts = np.diff(edges).astype(np.int64)
    parts = np.zeros((counts.size, N_NORM, n))
    blocks = Z.copy()
    for t, (r0, r1) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if r1 > r0:
            batch_statistics(blocks[r0:r1], b, parts[t])
    merged, whole = np.zeros((N_NORM, n)), np.zeros((N_NORM, n))
    merge_statistics(parts, counts, merged, n)
    batch_statistics(Z.copy(), b, whole)
    # both sides round the deviations z − μ to ulps of |z| ≈ shift: relative shift/scale ulps
    rtol = 1e-10 + 1e-14 * shift / scale
    for row in (NM_MEAN, NM_VAR, NM_ISTD):
        np.testing.assert_allclose(merged[row], whole[row], rtol=rtol)
