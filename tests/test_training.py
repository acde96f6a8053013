"""train(): optimizer × clipping against PyTorch's documented formulas, sampling, determinism."""

import importlib

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st
from problems import make_problem

from bpdiag import MLP, train
from bpdiag.choices.clipping import CLIPPING
from bpdiag.choices.optim import OPTIMIZERS as REGISTERED_OPTIMIZERS
from bpdiag.training import BatchSampler

OPTIMIZERS = {
    "sgd": {},
    "momentum": {},
    "nesterov": {},
    "rmsprop": {},
    "adam": {},
    "adamw": {},
    "sgd+wd+dampening": {"momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05},
    "rmsprop+momentum+centered": {"momentum": 0.7, "centered": True, "weight_decay": 0.01},
    "adam+wd": {"weight_decay": 0.1, "betas": (0.8, 0.95), "eps": 1e-6},
    "adamw+wd": {"weight_decay": 0.2},
}
# clip values chosen so that each mode actually clips on this problem
CLIPS = {"none": None, "value": 0.02, "norm": 0.1, "layer": 0.08, "agc": 0.05}


def _setup(loss="bce", activation="tanh"):
    net = MLP([5, 8, 6, 3], activation=activation, loss=loss, init="xavier_normal", seed=2)
    X, Y = make_problem(loss, m=16)
    return net, X, Y


def test_the_cases_cover_every_registered_optimizer_and_clipping_mode():
    assert {key.split("+")[0] for key in OPTIMIZERS} == set(REGISTERED_OPTIMIZERS)
    assert set(CLIPS) == set(CLIPPING)


@pytest.mark.parametrize("clip", list(CLIPS))
@pytest.mark.parametrize("opt_key", list(OPTIMIZERS))
def test_optimizer_and_clipping_match_reference(opt_key, clip):
    name, options = opt_key.split("+")[0], OPTIMIZERS[opt_key]
    lr = 0.01 if name != "sgd" else 0.1
    net, X, Y = _setup()
    start = net.params
    train(net, X, Y, optimizer=name, lr=lr, steps=6, batch_size=None, clip=clip,
          clip_value=CLIPS[clip], record_every=1, **options)  # fmt: skip
    expected = ref.train_full_batch(start, X, Y, "tanh", "bce", name, lr, 6, clip, CLIPS[clip],
                                    **options)  # fmt: skip
    assert ref.rel_err(net.params, expected) < 1e-10
    assert ref.rel_err(net.params, start) > 1e-4  # it moved


@pytest.mark.parametrize("clip", ["value", "norm", "layer", "agc"])
def test_each_clip_mode_is_active_on_the_test_problem(clip):
    net, X, Y = _setup()
    _, grads = ref.loss_and_grads(net.params, X, Y, "tanh", "bce")
    clipped = ref.clip(clip, CLIPS[clip], net.params, grads)
    assert ref.rel_err(clipped, grads) > 1e-3


def test_minibatch_training_matches_reference_on_the_same_batches():
    net, X, Y = _setup("ce", "relu")
    params = net.params
    hist = train(net, X, Y, optimizer="momentum", lr=0.05, steps=7, batch_size=5, seed=4)
    opt = ref.Optimizer("momentum", 0.05)
    idx, starts = BatchSampler(16, 5, True, 4).take(7)
    for s in range(7):
        rows = idx[starts[s] : starts[s + 1]]
        _, grads = ref.loss_and_grads(params, X[rows], Y[rows], "relu", "ce")
        params = ref.unflatten(opt.step(ref.flatten(params), ref.flatten(grads)), params)
    assert ref.rel_err(net.params, params) < 1e-10
    assert hist.steps_done == 7


def test_recorded_loss_and_norms_are_those_of_the_step():
    net, X, Y = _setup()
    start = net.params
    hist = train(net, X, Y, optimizer="sgd", lr=0.1, steps=3, batch_size=None, clip="norm",
                 clip_value=0.1, record_every=1)  # fmt: skip
    value, grads = ref.loss_and_grads(start, X, Y, "tanh", "bce")
    row = hist.steps.iloc[0]
    total = np.linalg.norm(ref.flatten(grads))
    assert row["step"] == 0 and row["loss"] == pytest.approx(value, rel=1e-12)
    assert row["grad_norm_total"] == pytest.approx(total, rel=1e-12)
    assert row["clip_coef"] == pytest.approx(0.1 / (total + 1e-6), rel=1e-12)
    assert row["grad_norm_total_clipped"] == pytest.approx(0.1 * total / (total + 1e-6), rel=1e-12)
    layer1 = hist.layers.query("step == 0 and layer == 1").iloc[0]
    assert layer1["grad_norm_W"] == pytest.approx(np.linalg.norm(grads[0][0]), rel=1e-12)
    assert list(hist.steps["step"]) == [0, 1, 2]


def test_float32_run_agrees_with_float64():
    finals = {}
    for dtype in ("float32", "float64"):
        net = MLP([5, 16, 16, 1], activation="tanh", loss="bce", seed=0, dtype=dtype)
        X, Y = make_problem("bce", m=64, n_out=1)
        train(net, X, Y, optimizer="adam", lr=1e-3, steps=20, batch_size=16, clip="norm",
              clip_value=1.0)  # fmt: skip
        finals[dtype] = ref.flatten(net.params).astype(np.float64)
    assert ref.rel_err(finals["float32"], finals["float64"]) < 1e-4


def test_training_is_bit_identical_when_repeated():
    results = []
    for _ in range(2):
        net, X, Y = _setup()
        hist = train(net, X, Y, optimizer="adam", lr=0.01, steps=50, batch_size=5, seed=7,
                     record_every=3)  # fmt: skip
        results.append((ref.flatten(net.params), hist.layers.to_numpy()))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1], equal_nan=True)


@pytest.mark.parametrize("opt_key", list(OPTIMIZERS))
def test_a_reused_workspace_changes_nothing(opt_key):
    """train() reuses the last call's scratch: poisoned with NaN, it must not leak into a run."""
    train_module = importlib.import_module("bpdiag.training")

    optimizer, kw = opt_key.split("+")[0], dict(OPTIMIZERS[opt_key])
    if optimizer in ("momentum", "nesterov"):
        optimizer, kw = "sgd", kw | {"momentum": 0.9, "nesterov": optimizer == "nesterov"}
    results = []
    for poison in (False, True):
        train_module._spare.clear()
        if poison:
            net, X, Y = _setup()
            train(net, X, Y, optimizer=optimizer, lr=0.01, steps=3, batch_size=5, **kw)
            (ws,) = train_module._spare.values()
            for buf in (*ws.buffers, ws.state):
                if buf.dtype.kind == "f":  # everything but the block offsets
                    buf.fill(np.nan)
        net, X, Y = _setup()
        hist = train(net, X, Y, optimizer=optimizer, lr=0.01, steps=20, batch_size=5, seed=7,
                     clip="norm", clip_value=0.1, record_every=3, **kw)  # fmt: skip
        results.append((ref.flatten(net.params), hist.layers.to_numpy()))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1], equal_nan=True)


def test_record_cadence_includes_first_and_last_step():
    net, X, Y = _setup()
    hist = train(net, X, Y, steps=25, record_every=10, batch_size=4)
    assert list(hist.steps["step"]) == [0, 10, 20, 24]
    assert len(hist.layers) == 4 * net.depth
    assert list(hist.layers["layer"][:3]) == [1, 2, 3]


def test_divergence_stops_cleanly_and_keeps_records():
    net = MLP([5, 32, 32, 32, 1], activation="relu", loss="mse", init="normal_1.0", seed=0)
    X, Y = make_problem("mse", m=32, n_out=1)
    hist = train(net, X, Y * 100, optimizer="sgd", lr=10.0, steps=200, record_every=5,
                 batch_size=None)  # fmt: skip
    assert hist.stopped_by == "nonfinite"
    assert 0 < hist.diverged_step < 200 and hist.steps_done == hist.diverged_step
    assert hist.steps["step"].iloc[-1] == hist.diverged_step
    assert not np.isfinite(hist.steps[["loss", "grad_norm_total"]].iloc[-1]).all()
    assert np.isfinite(hist.steps["loss"].iloc[0])


@given(m=st.integers(1, 40), batch=st.integers(1, 45), n=st.integers(1, 30),
       shuffle=st.booleans(), seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_sampler_covers_each_epoch_exactly_once(m, batch, n, shuffle, seed):
    batch = min(batch, m)
    idx, starts = BatchSampler(m, batch, shuffle, seed).take(n)
    sizes = np.diff(starts)
    assert len(sizes) == n and np.all((sizes >= 1) & (sizes <= batch))
    per_epoch = -(-m // batch)
    flat = [idx[starts[s] : starts[s + 1]] for s in range(n)]
    for e in range(n // per_epoch):
        epoch = np.concatenate(flat[e * per_epoch : (e + 1) * per_epoch])
        assert sorted(epoch) == list(range(m))


def test_chunked_sampling_equals_one_take():
    a = BatchSampler(23, 5, True, 1)
    b = BatchSampler(23, 5, True, 1)
    idx, starts = a.take(17)
    parts = [b.take(k) for k in (3, 1, 9, 4)]
    joined = np.concatenate([i for i, _ in parts])
    assert np.array_equal(idx, joined)


def test_hooks_see_chunks_and_can_stop():
    seen = []

    def stop_after_first(chunk):
        seen.append(chunk)
        return True

    net, X, Y = _setup()
    hist = train(net, X, Y, steps=10_000, hooks=[stop_after_first])
    assert len(seen) == 1 and hist.stopped_by == "function" and hist.steps_done < 10_000
    assert seen[0].step == hist.steps_done and list(seen[0].steps["step"])[0] == 0


def test_chunks_double_from_16_steps_up_to_the_cap():
    from bpdiag.training import chunk_steps

    seen = []
    net, X, Y = _setup()
    train(net, X, Y, steps=300, hooks=[lambda chunk: seen.append(chunk.step)])
    cap = chunk_steps(net, X.shape[0])
    want, done, n = [], 0, 16
    while done < 300:
        done += min(n, cap, 300 - done)
        want.append(done)
        n *= 2
    assert seen == want and want[:3] == [16, 48, 112]
