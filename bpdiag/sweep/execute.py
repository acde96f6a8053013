"""``execute(RunConfig) -> RunResult``: data → model → train → diagnose → figures, pure and
picklable, so a Dask worker anywhere can run it without reaching the tracking store."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd

from bpdiag.schema import TIMINGS
from bpdiag.sweep.config import RunConfig


@dataclass
class RunResult:
    """What a worker sends back to the driver (the one MLflow writer)."""

    config: RunConfig
    status: str  # "FINISHED" or "FAILED"
    error: str | None = None  # traceback of a failed run
    label: str | None = None  # the diagnosis
    reason: str = ""
    headline: str = ""  # the verdict's timeline in a line (``Diagnosis.headline``)
    timeline: str = ""  # its phases as label@step pairs (``Diagnosis.timeline``)
    phases: list[dict] = field(default_factory=list)  # ``Phase.as_dict`` of each phase
    flags: dict[str, str] = field(default_factory=dict)  # the verdict's flags
    evidence: dict[str, float] = field(default_factory=dict)  # the diagnosis's numbers
    summary: dict[str, float] = field(default_factory=dict)  # History.summary (evidence included)
    steps: pd.DataFrame | None = None
    layers: pd.DataFrame | None = None
    sharpness: pd.DataFrame | None = None  # History.sharpness (empty unless sharpness_every)
    figures: dict[str, bytes] = field(default_factory=dict)  # artifact name → PNG
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (schema.TIMINGS)
    worker: str = ""
    blas: str = ""  # the library the kernels' GEMMs ran in
    started: float = 0.0  # unix seconds on the worker: the run's start and end there
    ended: float = 0.0

    @property
    def run_key(self) -> str:
        return self.config.run_key


@lru_cache(maxsize=16)
def _dataset(name: str, n_samples: int, seed: int):
    from bpdiag import data

    return data.load(name, n_samples=n_samples, seed=seed)


@lru_cache(maxsize=1)
def _figures():
    """This process's figure renderer (it reuses its matplotlib objects run after run)."""
    from bpdiag.diagnostics.figures import RunFigures

    return RunFigures()


def execute(cfg: RunConfig, figures: bool = True) -> RunResult:
    """Train one configuration and diagnose it; never raises (a failure is a FAILED result)."""
    from bpdiag.diagnostics.figures import run_title
    from bpdiag.instruments import jacobian_inputs_for
    from bpdiag.model import MLP
    from bpdiag.training import train

    times: dict[str, float] = {}
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started, start = time.time(), time.perf_counter()
    try:
        ds = _dataset(cfg.dataset, cfg.n_samples, cfg.seed)
        times["data_s"] = time.perf_counter() - start
        sizes = [ds.n_features] + [cfg.width] * (cfg.depth - 1) + [ds.n_outputs]
        net = MLP(sizes, activation=cfg.activation, loss=ds.loss, init=cfg.init, seed=cfg.seed,
                  dtype=cfg.dtype, norm=cfg.norm, residual=cfg.residual,
                  residual_scale=cfg.residual_scale)  # fmt: skip
        t = time.perf_counter()
        hist = train(
            net, ds.X_train, ds.Y_train, optimizer=cfg.optimizer, lr=cfg.lr, steps=cfg.steps,
            batch_size=cfg.batch_size, clip=cfg.clip, clip_value=cfg.clip_value,
            record_every=cfg.record_every, seed=cfg.seed, eval_data=(ds.X_test, ds.Y_test),
            threads=1,  # one worker process per core: one thread each
            sharpness_every=cfg.sharpness_every,
            jacobian_inputs=jacobian_inputs_for(cfg.norm, cfg.jacobian_inputs),
            **cfg.optimizer_options(),
        )  # fmt: skip
        times["train_call_s"] = time.perf_counter() - t
        t = time.perf_counter()
        diagnosis, summary = hist.diagnosis, hist.summary
        times["diagnose_s"] = time.perf_counter() - t
        t = time.perf_counter()
        pngs = {}
        if figures:
            pngs = _figures().render(hist, f"{cfg.dataset} · {run_title(hist)}")
        times["plots_s"] = time.perf_counter() - t
        times["total_s"] = time.perf_counter() - start
        return RunResult(
            cfg, "FINISHED", label=diagnosis.label, reason=diagnosis.reason,
            headline=diagnosis.headline, timeline=diagnosis.timeline,
            phases=[p.as_dict() for p in diagnosis.phases],
            flags=dict(diagnosis.flags),
            evidence=diagnosis.evidence, summary=summary, steps=hist.steps, layers=hist.layers,
            sharpness=hist.sharpness,
            figures=pngs, timings={k: times[k] for k in TIMINGS}, worker=worker, blas=hist.blas,
            started=started, ended=time.time(),
        )  # fmt: skip
    except Exception:
        times["total_s"] = time.perf_counter() - start
        return RunResult(cfg, "FAILED", error=traceback.format_exc(), timings=times, worker=worker,
                         started=started, ended=time.time())  # fmt: skip


def warm_up(own_cluster: bool = False) -> str:
    """Import the heavy modules and load (on a fresh machine: compile) every kernel, with BLAS
    single-threaded: one worker process per core. Returns the worker's name.

    ``own_cluster``: the worker belongs to the sweep's LocalCluster and shares its terminal, so
    it ignores Ctrl-C (SIGINT); the sweep, which gets it too, stops it cleanly instead.

    Workers on one machine share Numba's on-disk cache: the first to find it empty compiles
    the kernels in a child process while the others wait, and all then load the cache
    (``bpdiag.compiled``); the imports run in parallel.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if own_cluster and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    import bpdiag.diagnostics.figures  # noqa: F401  (matplotlib), in parallel with other workers

    _dataset("spirals", 32, 0)
    tiny = {"depth": 3, "width": 4, "steps": 2, "record_every": 1, "n_samples": 32}
    for dtype in ("float32", "float64"):
        execute(RunConfig(**tiny, dtype=dtype), figures=False)
    execute(RunConfig(**tiny))  # figures too: matplotlib's fonts and caches
    return f"{socket.gethostname()}:{os.getpid()}"
