"""``train()``: minibatches, the chunked kernel loop, hooks, and the recorded ``History``."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import numba
import numpy as np
import pandas as pd

from bpdiag import loop, parallel
from bpdiag.clipping import clip_code
from bpdiag.diagnose import Diagnosis, diagnose
from bpdiag.hooks import Chunk, NaNGuard
from bpdiag.model import MLP
from bpdiag.optim import resolve_optimizer
from bpdiag.theory import Prediction, predict

CHUNK_SECONDS = 0.25  # target wall time of one kernel call; hooks see the records once per chunk
# Multiply-adds per layer and step (batch × fan-in × fan-out, averaged over the layers) from which
# the multi-threaded step beats one thread with multi-threaded BLAS (2 cores, interleaved A/B):
# width and batch 128 (2^21) 25–35 % faster, width 1024 and batch 512 (2^29) 7–13 % faster;
# width and batch 64 (2^18) up to 55 % slower, the ~2.5 µs hand-offs outweighing the gain.
PARALLEL_MIN_MACS = 2**20


@dataclass
class Workspace:
    """The scratch one ``train()`` call writes into: activation, pre-activation and delta
    buffers (``Layout.buffers``), the gradient, the optimizer state (3, n_params) and the target
    batch. Nothing in it is read before the kernels write it (the optimizer takes its state as
    zero at step 1), so a workspace can serve call after call without being cleared."""

    acts: np.ndarray
    zs: np.ndarray
    deltas: np.ndarray
    grads: np.ndarray
    state: np.ndarray
    Yb: np.ndarray

    @classmethod
    def new(cls, net: MLP, batch: int, n_targets: int) -> Workspace:
        lay = net.layout
        # the state starts as zeros all the same: stale bits (an old array's integers read as
        # floats are subnormal) would slow any arithmetic a vectorized loop does on unused lanes
        return cls(*lay.buffers(batch, net.dtype), np.empty_like(net.theta),
                   np.zeros((3, lay.n_params), net.dtype), np.empty((batch, n_targets), net.dtype))  # fmt: skip


# The last call's workspace, by (sizes, batch, targets, dtype): the next call with the same shapes
# takes it instead of faulting in fresh pages (hundreds of MB for a wide net, ~100 ms a step
# when the kernel cannot back them with huge pages). Taken out while in use, so a concurrent or
# nested call allocates its own; only one is kept.
_spare: dict[tuple, Workspace] = {}


def _workspace(net: MLP, batch: int, n_targets: int) -> tuple[tuple, Workspace]:
    key = (tuple(net.sizes), batch, n_targets, net.dtype.str)
    ws = _spare.pop(key, None)
    return key, ws if ws is not None else Workspace.new(net, batch, n_targets)


def _keep(key: tuple, ws: Workspace) -> None:
    _spare.clear()
    _spare[key] = ws


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
class History:
    """Everything recorded by one ``train()`` call, with its diagnosis and summary."""

    steps: pd.DataFrame  # one row per record: step, loss, accuracy, grad_norm_total, ...
    layers: pd.DataFrame  # long form: step, layer (1-based), grad_norm_W, delta_rms, ...
    steps_done: int
    diverged_step: int  # first step with a non-finite loss or gradient, −1 if none
    stopped_by: str | None  # None, "nonfinite" or the class name of the hook that stopped
    train_seconds: float
    clipped_steps: int  # steps whose gradient the clipping changed
    model: dict  # sizes, activation, init, loss, dtype of the net
    input_second_moment: float  # q_0 = E[x²] of the training inputs (for the theory)
    final: dict = field(default_factory=dict)  # loss/accuracy on the training (and test) set
    config: dict = field(default_factory=dict)

    @cached_property
    def theory(self) -> Prediction | None:
        """Mean-field prediction at init (None for a one-layer net)."""
        m = self.model
        if len(m["sizes"]) < 3:
            return None
        return predict(m["sizes"], m["activation"], m["init"], self.input_second_moment)

    @cached_property
    def diagnosis(self) -> Diagnosis:
        """The verdict with default thresholds; ``bpdiag.diagnose(hist, ...)`` to override them."""
        return diagnose(self)

    @property
    def summary(self) -> dict[str, float]:
        """Flat summary metrics of the run (the MLflow summary metrics)."""
        ev = self.diagnosis.evidence
        return {
            **self.final,
            "grad_ratio_first_last": ev["delta_ratio_init"],
            "grad_ratio_first_last_W": ev["grad_W_ratio_init"],
            "grad_ratio_first_last_theory": ev["delta_ratio_theory"],
            "decay_per_layer": ev["decay_per_layer"],
            "decay_per_layer_theory": ev["decay_per_layer_theory"],
            "chi1_theory": ev["chi1_theory"],
            "depth_scale_theory": ev["depth_scale_theory"],
            "clip_fraction": self.clipped_steps / max(self.steps_done, 1),
            "dead_fraction": ev["dead_fraction"],
            "saturated_fraction": ev["saturated_fraction"],
            "diverged_step": float(ev["diverged_step"]),
            "train_seconds": self.train_seconds,
            "steps_per_second": self.steps_done / self.train_seconds
            if self.train_seconds > 0
            else math.nan,
        }


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _steps_table(rec_step: np.ndarray) -> pd.DataFrame:
    """History.steps from the (records, STEP_COLUMNS) array."""
    table = pd.DataFrame(rec_step, columns=list(loop.STEP_COLUMNS))
    table["step"] = table["step"].astype(np.int64)
    return table


def _layers_table(rec_layer: np.ndarray, steps: pd.Series) -> pd.DataFrame:
    """History.layers (long form) from the (records, L, LAYER_COLUMNS) array."""
    n, L, n_cols = rec_layer.shape
    layers = pd.DataFrame(rec_layer.reshape(n * L, n_cols), columns=list(loop.LAYER_COLUMNS))
    layers.insert(0, "layer", np.tile(np.arange(1, L + 1), n))
    layers.insert(0, "step", np.repeat(steps.to_numpy(), L))
    layers["nonfinite"] = layers["nonfinite"].astype(np.int64)
    return layers


def _threads(threads: object, net: MLP, batch: int) -> int:
    """How many threads one training uses (see ``train``'s ``threads``)."""
    available = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        sizes = net.sizes
        macs = batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)) / net.depth
        return numba.get_num_threads() if macs >= PARALLEL_MIN_MACS else 1
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads <= 0:
        raise ValueError(f"threads must be None or a positive integer, got {threads!r}")
    if threads > available:
        raise ValueError(f"threads must be at most {available} (NUMBA_NUM_THREADS), got {threads}")
    return int(threads)


@contextmanager
def _threading(threads: int) -> Iterator[None]:
    """Numba's thread count for the kernels, and OpenBLAS single-threaded while they run
    parallel passes (its threads would compete with Numba's for the same cores; MKL, where
    ``bpdiag.blas`` uses it, is sequential already)."""
    if threads == 1:
        yield
        return
    import scipy.linalg.cython_blas  # noqa: F401  (Numba's BLAS: loaded, so that the limit reaches it)
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(before)


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
    eval_data: tuple[object, object] | None = None,
    nan_guard: bool = True,
    threads: int | None = None,
    **optimizer_options: object,
) -> History:
    """Train ``net`` in place for ``steps`` optimizer steps and return what was recorded.

    X: (m, n_in); Y: targets as ``MLP.loss_and_grads`` takes them. ``batch_size=None`` is full
    batch. Optimizer options use PyTorch's keyword names (``momentum``, ``betas``, ``eps``, ...).
    Records are taken at steps 0, record_every, 2·record_every, ..., the last step, and the step
    where a non-finite loss or gradient appears. The NaN guard (``nan_guard=True``) stops training
    inside the kernel at that step, before any update; without it ``diverged_step`` is the first
    *recorded* non-finite step. A hook is a callable ``hook(chunk: Chunk) -> bool | None`` called
    once per kernel call; returning True stops training. ``eval_data=(X_test, Y_test)`` adds
    ``test_loss``/``test_accuracy`` to the summary. The scratch buffers of the last call (the
    net's activations for one batch, and 4× its parameters) stay allocated for the next call with
    the same shapes. ``threads``: CPU threads for the step's passes, each GEMM on the thread that
    calls it (``bpdiag.blas``); None uses all of Numba's threads when a layer has at least
    ``PARALLEL_MIN_MACS`` multiply-adds a step and one thread below that (with OpenBLAS, whose
    GEMMs then use its threads as configured).
    Results agree with one thread's to rounding (see ``bpdiag.parallel``).
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a bpdiag.MLP, got {type(net).__name__}")
    X = net.check_X(X)
    m = X.shape[0]
    Y_raw, Y = Y, net.check_Y(Y, m)
    steps = _positive_int("steps", steps)
    record_every = _positive_int("record_every", record_every)
    batch = m if batch_size is None else min(_positive_int("batch_size", batch_size), m)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    opt_code, hp = resolve_optimizer(optimizer, lr, dict(optimizer_options))
    c_code, c_value = clip_code(clip, clip_value)
    if eval_data is not None:
        if not isinstance(eval_data, tuple | list) or len(eval_data) != 2:
            raise TypeError("eval_data must be a pair (X_test, Y_test)")
        X_test = net.check_X(eval_data[0], "eval_data X")
        net.check_Y(eval_data[1], X_test.shape[0], "eval_data Y")
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"hooks must be callables taking a Chunk, got {hook!r}")
        if isinstance(hook, NaNGuard):
            nan_guard = nan_guard and hook.enabled

    threads = _threads(threads, net, batch)

    lay = net.layout
    a_off = lay.a_off(batch)
    pcs = parallel.pieces(lay.w_off, lay.b_off, lay.sizes, parallel.PIECE if threads > 1 else 2**62)
    key, ws = _workspace(net, batch, Y.shape[1])
    acts, zs, deltas, grads, state, Yb = ws.acts, ws.zs, ws.deltas, ws.grads, ws.state, ws.Yb
    codes = net.codes(opt_code, c_code, nan_guard, threads)
    counters = np.zeros(1, np.int64)
    n_rec = (steps - 1) // record_every + 2  # cadence, the last step, a non-finite step
    rec_step = np.full((n_rec, len(loop.STEP_COLUMNS)), np.nan)
    rec_layer = np.full((n_rec, net.depth, len(loop.LAYER_COLUMNS)), np.nan)
    sampler = BatchSampler(m, batch, shuffle, seed)

    done, row, chunk, stopped_by, diverged = (
        0,
        0,
        16,
        None,
        -1,
    )  # chunks then grow to ~CHUNK_SECONDS
    start = time.perf_counter()
    with _threading(threads):
        while done < steps and stopped_by is None:
            n = min(chunk, steps - done)
            idx, starts = sampler.take(n)
            t0 = time.perf_counter()
            k, new_row, status = loop.train_steps(
                net.theta, grads, state, hp, c_value, codes, lay.sizes, lay.w_off, lay.b_off, a_off,
                pcs, acts, zs, deltas, Yb, X, Y, idx, starts, done, steps - 1, record_every,
                rec_step, rec_layer, row, counters,
            )  # fmt: skip
            elapsed = time.perf_counter() - t0
            if status == loop.STATUS_NONFINITE:
                diverged, stopped_by = done + k, "nonfinite"
            done += k
            if hooks:  # building the chunk's table takes ~0.5 ms, a step or two of a small net
                nonfinite = status == loop.STATUS_NONFINITE
                info = Chunk(done, steps, _steps_table(rec_step[row:new_row]), nonfinite)
                for hook in hooks:
                    if hook(info) and stopped_by is None:
                        stopped_by = type(hook).__name__
            row = new_row
            chunk = max(1, min(4096, int(n * CHUNK_SECONDS / max(elapsed, 1e-6))))
    seconds = time.perf_counter() - start
    _keep(key, ws)
    steps_df = _steps_table(rec_step[:row])
    layers_df = _layers_table(rec_layer[:row], steps_df["step"])
    if diverged < 0:  # without the guard: the first recorded non-finite step
        bad = ~np.isfinite(steps_df["loss"]) | ~np.isfinite(steps_df["grad_norm_total"])
        diverged = int(steps_df["step"][bad].iloc[0]) if bad.any() else -1
    final = dict(zip(("final_loss", "final_accuracy"), net.evaluate(X, Y_raw), strict=True))
    if eval_data is not None:
        final.update(zip(("test_loss", "test_accuracy"), net.evaluate(*eval_data), strict=True))
    model = {"sizes": net.sizes, "activation": net.activation, "init": net.init, "loss": net.loss,
             "dtype": net.dtype.name}  # fmt: skip
    config = {
        "optimizer": optimizer, "lr": lr, "steps": steps, "batch_size": batch_size,
        "shuffle": shuffle, "clip": clip, "clip_value": clip_value,
        "record_every": record_every, "seed": seed, **optimizer_options,
    }  # fmt: skip
    return History(steps_df, layers_df, done, diverged, stopped_by, seconds, int(counters[0]),
                   model, float(np.mean(X.astype(np.float64) ** 2)), final, config)  # fmt: skip
