"""``train()``: minibatches, the chunked kernel loop, hooks, and the recorded ``History``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bpdiag import kernels
from bpdiag.clipping import clip_code
from bpdiag.model import MLP
from bpdiag.optim import resolve_optimizer

CHUNK_SECONDS = 0.25  # target wall time of one kernel call; hooks see the records once per chunk


class BatchSampler:
    """Row indices of consecutive minibatches, as ``DataLoader(shuffle, drop_last=False)``.

    Each epoch is a permutation of the m rows (drawn from ``seed`` when ``shuffle``), cut into
    batches of ``batch_size`` with a smaller last batch. ``take(n)`` returns the next n batches as
    (idx, starts): batch s is ``idx[starts[s]:starts[s + 1]]``. Python work is per epoch, not per step.
    """

    def __init__(self, m: int, batch_size: int, shuffle: bool, seed: int) -> None:
        self.m, self.batch_size = m, batch_size
        self.shuffle = shuffle and batch_size < m
        self.rng = np.random.default_rng(seed)
        self.bounds = np.append(np.arange(0, m, batch_size), m)  # batch edges within an epoch
        self.order = self._epoch()
        self.batch = 0  # next batch of the current epoch

    def _epoch(self) -> np.ndarray:
        return self.rng.permutation(self.m) if self.shuffle else np.arange(self.m)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx, starts, offset = [], [np.zeros(1, np.int64)], 0
        while n > 0:
            if self.batch == len(self.bounds) - 1:
                self.order, self.batch = self._epoch(), 0
            stop = min(len(self.bounds) - 1, self.batch + n)
            lo, hi = self.bounds[self.batch], self.bounds[stop]
            idx.append(self.order[lo:hi])
            starts.append(self.bounds[self.batch + 1 : stop + 1] - lo + offset)
            offset += hi - lo
            n -= stop - self.batch
            self.batch = stop
        return np.concatenate(idx).astype(np.int64), np.concatenate(starts).astype(np.int64)


@dataclass
class Chunk:
    """What a hook sees after each kernel call: the records written by that call."""

    step: int  # optimizer steps done so far
    total_steps: int
    steps: pd.DataFrame  # rows of History.steps recorded in this chunk
    nonfinite: bool  # the chunk stopped at a non-finite loss or gradient


@dataclass
class History:
    """Everything recorded by one ``train()`` call."""

    steps: pd.DataFrame  # one row per record: step, loss, accuracy, grad_norm_total, ...
    layers: pd.DataFrame  # long form: step, layer (1-based), grad_norm_W, delta_rms, ...
    steps_done: int
    diverged_step: int  # first step with a non-finite loss or gradient, −1 if none
    stopped_by: str | None  # None, "nonfinite" or the class name of the hook that stopped
    train_seconds: float
    config: dict = field(default_factory=dict)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _tables(rec_step: np.ndarray, rec_layer: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    steps = pd.DataFrame(rec_step, columns=list(kernels.STEP_COLUMNS))
    steps["step"] = steps["step"].astype(np.int64)
    n, L, _ = rec_layer.shape
    layers = pd.DataFrame(rec_layer.reshape(n * L, -1), columns=list(kernels.LAYER_COLUMNS))
    layers.insert(0, "layer", np.tile(np.arange(1, L + 1), n))
    layers.insert(0, "step", np.repeat(steps["step"].to_numpy(), L))
    layers["nonfinite"] = layers["nonfinite"].astype(np.int64)
    return steps, layers


def train(
    net: MLP,
    X: object,
    Y: object,
    optimizer: str = "adam",
    lr: float = 1e-3,
    steps: int = 1000,
    batch_size: int | None = 64,
    shuffle: bool = True,
    clip: str = "none",
    clip_value: float | None = None,
    record_every: int = 10,
    seed: int = 0,
    hooks: Sequence[object] = (),
    stop_on_nonfinite: bool = True,
    **optimizer_options: object,
) -> History:
    """Train ``net`` in place for ``steps`` optimizer steps and return what was recorded.

    X: (m, n_in); Y: targets as ``MLP.loss_and_grads`` takes them. ``batch_size=None`` is full
    batch. Optimizer options use PyTorch's keyword names (``momentum``, ``betas``, ``eps``, ...).
    Records are taken at steps 0, record_every, 2·record_every, ..., the last step, and the step
    where a non-finite loss or gradient appears; training stops there if ``stop_on_nonfinite``
    (otherwise ``diverged_step`` is the first *recorded* non-finite step).
    A hook is a callable ``hook(chunk: Chunk) -> bool | None``; returning True stops training.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a bpdiag.MLP, got {type(net).__name__}")
    X = net.check_X(X)
    m = X.shape[0]
    Y = net.check_Y(Y, m)
    steps = _positive_int("steps", steps)
    record_every = _positive_int("record_every", record_every)
    batch = m if batch_size is None else min(_positive_int("batch_size", batch_size), m)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    opt_code, hp = resolve_optimizer(optimizer, lr, dict(optimizer_options))
    c_code, c_value = clip_code(clip, clip_value)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"hooks must be callables taking a Chunk, got {hook!r}")

    lay = net.layout
    a_off = lay.a_off(batch)
    acts, zs, deltas = lay.buffers(batch, net.dtype)
    Yb = np.zeros((batch, Y.shape[1]), net.dtype)
    grads = np.zeros_like(net.theta)
    state = np.zeros((3, lay.n_params), net.dtype)
    codes = net.codes(opt_code, c_code, stop_on_nonfinite)
    n_rec = (steps - 1) // record_every + 2  # cadence, the last step, a non-finite step
    rec_step = np.full((n_rec, len(kernels.STEP_COLUMNS)), np.nan)
    rec_layer = np.full((n_rec, net.depth, len(kernels.LAYER_COLUMNS)), np.nan)
    sampler = BatchSampler(m, batch, shuffle, seed)

    done, row, chunk, stopped_by, diverged = 0, 0, min(record_every, 16), None, -1
    start = time.perf_counter()
    while done < steps and stopped_by is None:
        n = min(chunk, steps - done)
        idx, starts = sampler.take(n)
        t0 = time.perf_counter()
        k, new_row, status = kernels.train_steps(
            net.theta, grads, state, hp, c_value, codes, lay.sizes, lay.w_off, lay.b_off, a_off,
            acts, zs, deltas, Yb, X, Y, idx, starts, done, steps - 1, record_every,
            rec_step, rec_layer, row,
        )  # fmt: skip
        elapsed = time.perf_counter() - t0
        if status == kernels.STATUS_NONFINITE:
            diverged, stopped_by = done + k, "nonfinite"
        done += k
        info = Chunk(done, steps, _tables(rec_step[row:new_row], rec_layer[row:new_row])[0],
                     status == kernels.STATUS_NONFINITE)  # fmt: skip
        row = new_row
        for hook in hooks:
            if hook(info) and stopped_by is None:
                stopped_by = type(hook).__name__
        chunk = max(1, min(4096, int(n * CHUNK_SECONDS / max(elapsed, 1e-6))))
    seconds = time.perf_counter() - start
    steps_df, layers_df = _tables(rec_step[:row], rec_layer[:row])
    if diverged < 0:  # without the guard: the first recorded non-finite step
        bad = ~np.isfinite(steps_df["loss"]) | ~np.isfinite(steps_df["grad_norm_total"])
        diverged = int(steps_df["step"][bad].iloc[0]) if bad.any() else -1
    config = {
        "optimizer": optimizer, "lr": lr, "steps": steps, "batch_size": batch_size,
        "shuffle": shuffle, "clip": clip, "clip_value": clip_value,
        "record_every": record_every, "seed": seed, **optimizer_options,
    }  # fmt: skip
    return History(steps_df, layers_df, done, diverged, stopped_by, seconds, config)
