"""``train()``: validation, minibatches, the chunked kernel loop with its hooks, the ``History``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np

from bpdiag import blas, compiled
from bpdiag._core.codes import BATCHNORM, STATUS_NONFINITE
from bpdiag._core.loop import train_steps
from bpdiag._core.parallel import PIECE, pieces
from bpdiag._core.slots import LAYER_SLOTS, STEP_SLOTS
from bpdiag._core.structs import Buffers, Feed, Records, Setup, make_buffers, n_params
from bpdiag.choices.clipping import clip_code
from bpdiag.choices.defaults import DEFAULTS
from bpdiag.choices.optim import resolve_optimizer
from bpdiag.history import History, layers_table, steps_table
from bpdiag.hooks import Chunk, NaNGuard
from bpdiag.instruments import SharpnessLog, jacobian_spectrum
from bpdiag.model import MLP

# Multiply-adds per kernel call: tens of milliseconds of work on one core. Hooks see the records
# once per chunk; chunks are sized by the net alone, never by the clock, so a hook that stops
# training stops it at the same step on a fast machine and a slow one.
CHUNK_MACS = 2**30
FIRST_CHUNK = 16  # steps in the first kernel call; each later call doubles it up to the cap
# Multiply-adds per layer and step (batch × fan-in × fan-out, averaged over the layers) from
# which the two-core step beats one thread: below it, handing work to the second core costs
# more than the core gives back (docs/performance.md).
PARALLEL_MIN_MACS = 20_000
# The same for a BatchNorm net, whose threads meet twice a layer (``bpdiag._core.bnpasses``):
# at 65K multiply-adds a layer its two-core step was slower than one thread, at 131K level,
# at 262K 1.3-1.4x faster (docs/performance.md).
BATCHNORM_PARALLEL_MIN_MACS = 131_072


@dataclass
class Workspace:
    """The scratch one ``train()`` call writes into: a batch's buffers and the optimizer state
    (3, n_params). Nothing in it is read before the kernels write it (the optimizer takes its
    state as zero at step 1), so a workspace can serve call after call without being cleared."""

    buffers: Buffers
    state: np.ndarray

    @classmethod
    def new(cls, net: MLP, batch: int, n_targets: int, threads: int = 1) -> Workspace:
        # the state starts as zeros all the same: stale bits (an old array's integers read as
        # floats are subnormal) would slow the arithmetic a vectorized loop does on unused lanes
        state = np.zeros((3, n_params(net.layout)), net.dtype)
        return cls(make_buffers(net.layout, batch, n_targets, net.dtype, threads), state)


# The last call's workspace, by the net's layout, batch, targets, dtype and threads: the next call with the same shapes
# takes it instead of faulting in fresh pages (hundreds of MB for a wide net). Taken out while in
# use, so a concurrent or nested call allocates its own; only one is kept.
_spare: dict[tuple, Workspace] = {}


def _workspace(net: MLP, batch: int, n_targets: int, threads: int) -> tuple[tuple, Workspace]:
    lay = net.layout
    key = (tuple(net.sizes), lay.norm, tuple(lay.skip), batch, n_targets, net.dtype.str, threads)
    ws = _spare.pop(key, None)
    return key, ws if ws is not None else Workspace.new(net, batch, n_targets, threads)


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


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _threads(threads: object, net: MLP, batch: int) -> int:
    """How many threads one training uses (see ``train``'s ``threads``)."""
    available = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        sizes = net.sizes
        macs = batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)) / net.depth
        floor = BATCHNORM_PARALLEL_MIN_MACS if net.layout.norm == BATCHNORM else PARALLEL_MIN_MACS
        return numba.get_num_threads() if macs >= floor else 1
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads <= 0:
        raise ValueError(f"threads must be None or a positive integer, got {threads!r}")
    if threads > available:
        raise ValueError(f"threads must be at most {available} (NUMBA_NUM_THREADS), got {threads}")
    return int(threads)


@contextmanager
def _threading(threads: int) -> Iterator[None]:
    """Numba's thread count for the kernels, and the BLAS on one thread while they run the
    parallel passes; each thread's BLAS buffers warmed first (``blas.warm``)."""
    blas.warm(threads)
    if threads == 1:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with blas.single_threaded():
            yield
    finally:
        numba.set_num_threads(before)


def _setup(net: MLP, batch: int, optimizer: str, lr: float, clip: str, clip_value: float | None,
           nan_guard: bool, threads: object, hooks: Sequence[object],
           options: dict[str, object]) -> Setup:  # fmt: skip
    """The kernel's training setup from train()'s arguments, each validated."""
    opt_code, hyper = resolve_optimizer(optimizer, lr, options)
    c_code, c_value = clip_code(clip, clip_value)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"hooks must be callables taking a Chunk, got {hook!r}")
        if isinstance(hook, NaNGuard):
            nan_guard = nan_guard and hook.enabled
    n = _threads(threads, net, batch)
    pcs = pieces(net.layout, PIECE if n > 1 else 2**62)  # one thread: one piece per W and b
    return Setup(opt_code, hyper, c_code, c_value, bool(nan_guard), n, pcs)


def train(
    net: MLP,
    X: object,
    Y: object,
    optimizer: str = DEFAULTS.optimizer,
    lr: float = DEFAULTS.lr,
    steps: int = DEFAULTS.steps,
    batch_size: int | None = DEFAULTS.batch_size,
    shuffle: bool = DEFAULTS.shuffle,
    clip: str = DEFAULTS.clip,
    clip_value: float | None = None,
    record_every: int = DEFAULTS.record_every,
    seed: int = DEFAULTS.seed,
    hooks: Sequence[object] = (),
    eval_data: tuple[object, object] | None = None,
    nan_guard: bool = True,
    threads: int | None = None,
    sharpness_every: int = 0,
    jacobian_inputs: int = 0,
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
    calls it; None uses all of Numba's threads when a layer has at least ``PARALLEL_MIN_MACS``
    multiply-adds a step (``BATCHNORM_PARALLEL_MIN_MACS`` for a BatchNorm net), and one thread
    (the BLAS's threads as configured) below that. The
    threads split the batch's rows (for a BatchNorm net they meet at every layer to merge its
    statistics).
    Results agree with one thread's to rounding (see ``bpdiag._core.parallel`` and ``bnpasses``).

    Instruments (``bpdiag.instruments``), off by default: ``sharpness_every=K`` measures the
    Hessian's top eigenvalue every K records (at steps 0, K·record_every, …, on up to
    ``SHARPNESS_ROWS`` fixed training rows; each measurement costs about 2 gradient passes over
    them per power iteration, warm-started from the last) into ``History.sharpness``;
    ``jacobian_inputs=n`` takes the Jacobian spectrum at init of the hidden block (layers 1 to
    L − 1, ``jacobian_spectrum(..., layers="hidden")``) at the first n training inputs into
    ``History.jacobian`` (not for BatchNorm nets).
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
    if eval_data is not None:
        if not isinstance(eval_data, tuple | list) or len(eval_data) != 2:
            raise TypeError("eval_data must be a pair (X_test, Y_test)")
        X_test = net.check_X(eval_data[0], "eval_data X")
        net.check_Y(eval_data[1], X_test.shape[0], "eval_data Y")
    sharpness_every = _count("sharpness_every", sharpness_every)
    jacobian_inputs = _count("jacobian_inputs", jacobian_inputs)
    if jacobian_inputs and net.layout.norm == BATCHNORM:
        raise ValueError("jacobian_inputs must be 0 for a BatchNorm net: its Jacobian per sample "
                         "is not defined in training (the batch couples the samples)")  # fmt: skip
    if net.layout.norm == BATCHNORM and (batch == 1 or m % batch == 1):
        raise ValueError(
            f"batchnorm needs at least 2 rows in every training batch (as torch.nn.BatchNorm1d "
            f"in training), but batch_size={batch_size!r} with {m} rows leaves a batch of 1 row; "
            f"choose a batch_size that leaves no batch of one"
        )
    setup = _setup(net, batch, optimizer, lr, clip, clip_value, nan_guard, threads, hooks,
                   dict(optimizer_options))  # fmt: skip
    library = compiled.ready()
    jacobian = jacobian_spectrum(net, X, jacobian_inputs, "hidden") if jacobian_inputs else None
    curvature = SharpnessLog.of(net, X, Y, sharpness_every * record_every, lr, seed)

    n_rec = (steps - 1) // record_every + 2  # cadence, the last step, a non-finite step
    rec = Records(np.full((n_rec, len(STEP_SLOTS)), np.nan),
                  np.full((n_rec, net.depth, len(LAYER_SLOTS)), np.nan), record_every, steps - 1,
                  np.zeros(1, np.int64))  # fmt: skip
    sampler = BatchSampler(m, batch, shuffle, seed)
    key, ws = _workspace(net, batch, Y.shape[1], setup.threads)
    start = time.perf_counter()
    with _threading(setup.threads):
        done, rows, stopped_by, diverged = _run(net, ws, setup, X, Y, sampler, rec, steps, hooks,
                                                curvature)  # fmt: skip
    seconds = time.perf_counter() - start - curvature.seconds  # the steps' own time
    _keep(key, ws)

    steps_df = steps_table(rec.steps[:rows])
    layers_df = layers_table(rec.layers[:rows], steps_df["step"])
    if diverged < 0:  # without the guard: the first recorded non-finite step
        bad = ~np.isfinite(steps_df["loss"]) | ~np.isfinite(steps_df["grad_norm_total"])
        diverged = int(steps_df["step"][bad].iloc[0]) if bad.any() else -1
    final = dict(zip(("final_loss", "final_accuracy"), net.evaluate(X, Y_raw), strict=True))
    if eval_data is not None:
        final.update(zip(("test_loss", "test_accuracy"), net.evaluate(*eval_data), strict=True))
    model = {"sizes": net.sizes, "activation": net.activation, "init": net.init, "loss": net.loss,
             "dtype": net.dtype.name, "norm": net.norm, "residual": net.residual,
             "residual_scale": net.residual_scale, "alpha": net.layout.alpha, "skips": net.skips,
             "batch": batch}  # fmt: skip
    config = {
        "optimizer": optimizer, "lr": lr, "steps": steps, "batch_size": batch_size,
        "shuffle": shuffle, "clip": clip, "clip_value": clip_value,
        "record_every": record_every, "seed": seed, **optimizer_options,
    }  # fmt: skip
    return History(steps_df, layers_df, done, diverged, stopped_by, seconds,
                   int(rec.counters[0]), model, float(np.mean(X.astype(np.float64) ** 2)), final,
                   config, str(library), curvature.table(), jacobian)  # fmt: skip


def chunk_steps(net: MLP, batch: int) -> int:
    """Steps per kernel call: about ``CHUNK_MACS`` multiply-adds, 1 to 4096 steps."""
    macs = batch * sum(a * b for a, b in zip(net.sizes[:-1], net.sizes[1:], strict=True))
    return max(1, min(4096, CHUNK_MACS // max(macs, 1)))


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (0: off), got {value!r}")
    return int(value)


def _run(net: MLP, ws: Workspace, setup: Setup, X: np.ndarray, Y: np.ndarray,
         sampler: BatchSampler, rec: Records, steps: int, hooks: Sequence[object],
         curvature: SharpnessLog) -> tuple[int, int, str | None, int]:  # fmt: skip
    """The kernel, chunk after chunk, with the hooks between: chunks of 16, 32, 64, … steps up
    to ``chunk_steps`` (so a hook sees a young run often, an old one cheaply), cut where the
    sharpness is due. Returns (steps done, records written, what stopped training, the
    non-finite step or −1)."""
    done, row, stopped_by, diverged = 0, 0, None, -1
    chunk, first = chunk_steps(net, int(ws.buffers.Y.shape[0])), FIRST_CHUNK
    while done < steps and stopped_by is None:
        if curvature.due(done):
            curvature.measure(net, done)
        n = min(chunk, first, steps - done, curvature.steps_to_next(done))
        first *= 2
        idx, starts = sampler.take(n)
        k, new_row, status = train_steps(net.theta, net.running, ws.state, net.layout, ws.buffers,
                                         setup, Feed(X, Y, idx, starts), rec, done, row)  # fmt: skip
        if status == STATUS_NONFINITE:
            diverged, stopped_by = done + k, "nonfinite"
        done += k
        if hooks:  # the chunk's table is built only for hooks to see
            info = Chunk(done, steps, steps_table(rec.steps[row:new_row]),
                         status == STATUS_NONFINITE)  # fmt: skip
            for hook in hooks:
                if hook(info) and stopped_by is None:
                    stopped_by = type(hook).__name__
        row = new_row
    return done, row, stopped_by, diverged
