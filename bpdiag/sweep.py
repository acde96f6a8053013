"""Run a sweep: expand the spec, skip what the store already has, train on Dask, log as results
arrive (the driver is the only MLflow writer), and finish with the parent's comparisons.

Workers: a ``LocalCluster`` of one single-threaded process per core unless a scheduler address
is given (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``). Each worker loads the Numba kernels
before its first task, one worker per machine at a time, so a fresh machine compiles once
without workers racing on the on-disk cache.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bpdiag.config import RunConfig, SweepSpec, load_spec
from bpdiag.run import RunResult, execute, warm_up
from bpdiag.tracking import Tracker, ui_url


@dataclass
class SweepOutcome:
    spec: SweepSpec
    runs: list[RunConfig]  # everything the spec expands to
    skipped: int = 0  # already FINISHED in the store
    finished: int = 0
    failed: int = 0
    experiment_id: str | None = None
    parent_run_id: str | None = None
    table: pd.DataFrame | None = None  # one row per FINISHED child of this sweep's run_keys
    timings: dict[str, float] = field(default_factory=dict)
    url: str = ""


def scheduler_address(scheduler: str | None) -> str | None:
    return scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


def _client(scheduler: str | None, workers: int | None):
    """A Dask client: the given scheduler, or a fresh LocalCluster (its own lifetime)."""
    import logging

    from distributed import Client, LocalCluster

    address = scheduler_address(scheduler)
    if address:
        return Client(address, timeout="30s"), None
    n = workers or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)  # fmt: skip
    return Client(cluster), cluster


def _close(client, cluster) -> None:
    client.close()
    if cluster is not None:
        cluster.close()


def _ready_client(scheduler: str | None, workers: int | None):
    """(client, cluster, workers, warm-up seconds): a client whose workers are all warm."""
    client, cluster = _client(scheduler, workers)
    try:
        t = time.perf_counter()
        n = _warm(client)
    except BaseException:
        _close(client, cluster)
        raise
    return client, cluster, n, time.perf_counter() - t


def _close_when_up(client_future) -> None:
    """Close the cluster being started in the background, once it is up (if it came up)."""
    try:
        client, cluster, *_ = client_future.result()
        _close(client, cluster)
    except Exception:
        pass


def _warm(client) -> int:
    """Warm every worker before the first task (see ``run.warm_up`` for the cache lock)."""
    if not client.scheduler_info()["workers"]:
        client.wait_for_workers(1, timeout=60)
    return len(client.run(warm_up))


def _cost(cfg: RunConfig) -> float:
    return cfg.steps * cfg.depth * cfg.width * (cfg.width + cfg.batch_size)


def run_sweep(
    spec_path: str | Path,
    tracking_uri: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    rerun: bool = False,
    on_start: Callable[[SweepOutcome, int], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) the sweep in ``spec_path``; see the module docstring.

    Raises ``SpecError`` for an invalid spec before anything is written. ``on_start(outcome,
    n_todo)`` and ``on_result(result)`` let the CLI show progress.
    """
    t_start = time.perf_counter()
    spec, runs = load_spec(spec_path)
    out = SweepOutcome(spec, runs)
    pool = ThreadPoolExecutor(max_workers=1)  # start and warm the workers while the store opens
    client_future = pool.submit(_ready_client, scheduler, workers)
    try:
        tracker = Tracker(tracking_uri)
        exp_id = tracker.experiment_id(spec.experiment_name)
        out.experiment_id, out.url = exp_id, ui_url(exp_id)
        keys = {cfg.run_key for cfg in runs}
        done = tracker.finished_keys(exp_id)
        todo = [cfg for cfg in runs if rerun or cfg.run_key not in done]
        out.skipped = len(runs) - len(todo)
        tracker.mark_stale(exp_id, keys)
        out.parent_run_id = parent = tracker.start_parent(
            exp_id, spec, Path(spec_path).read_text(), len(runs), out.skipped
        )
    except BaseException:
        _close_when_up(client_future)
        raise
    finally:
        pool.shutdown(wait=False)
    if on_start:
        on_start(out, len(todo))
    import bpdiag.plots  # noqa: F401  (matplotlib, for the parent's figures) while workers warm

    status = "FAILED"
    results: list[RunResult] = []
    losses: dict[str, pd.DataFrame] = {}  # run_id → (step, loss) of this invocation's runs
    closing = ThreadPoolExecutor(max_workers=1)  # the cluster shuts down while the parent finishes
    try:
        client, cluster, n_workers, warm_s = client_future.result()
        try:
            if todo:
                out.timings["workers"], out.timings["warm_s"] = n_workers, warm_s
                out.timings["startup_s"] = time.perf_counter() - t_start
                results = _execute(client, todo, tracker, exp_id, parent, spec.name, rerun, done,
                                   out, on_result, losses)  # fmt: skip
        finally:
            closing.submit(_close, client, cluster)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        t = time.perf_counter()
        if status == "FINISHED":
            out.table = tracker.table(exp_id, keys)
            tracker.finish_parent(
                parent, out.table, _comparison_figures(tracker, out.table, losses), status
            )
        else:
            tracker.end_parent(parent, status)
        out.timings["finish_s"] = time.perf_counter() - t
        closing.shutdown(wait=True)
        out.timings["wall_s"] = time.perf_counter() - t_start
        out.timings["log_s"] = tracker.log_seconds
        out.timings["train_s"] = sum(r.timings.get("train_s", 0.0) for r in results)
        out.timings["worker_s"] = sum(r.timings.get("total_s", 0.0) for r in results)
    return out


def _execute(
    client, todo, tracker, exp_id, parent, sweep, rerun, done, out, on_result, losses
) -> list[RunResult]:
    from distributed import as_completed

    futures = {
        client.submit(
            execute, cfg, key=f"bpdiag-run-{cfg.run_key}-{time.time_ns()}", pure=False
        ): cfg
        for cfg in sorted(todo, key=_cost, reverse=True)
    }
    results = []
    t = time.perf_counter()
    for future in as_completed(futures):
        cfg = futures.pop(future)
        try:
            result = future.result()
        except Exception as err:  # the worker died or the task could not run
            result = RunResult(cfg, "FAILED", error=f"{type(err).__name__}: {err}")
        future.release()
        run_id = tracker.log_child(exp_id, parent, sweep, result)
        if result.steps is not None:
            losses[run_id] = result.steps[["step", "loss"]]
        if rerun and result.status == "FINISHED" and cfg.run_key in done:
            tracker.client.delete_run(done[cfg.run_key])  # keep one FINISHED child per run_key
        out.finished += result.status == "FINISHED"
        out.failed += result.status != "FINISHED"
        result.figures, result.layers, result.steps = {}, None, None  # logged; keep memory flat
        results.append(result)
        if on_result:
            on_result(result)
    out.timings["run_phase_s"] = time.perf_counter() - t
    return results


def _comparison_figures(
    tracker: Tracker, table: pd.DataFrame, losses: dict[str, pd.DataFrame]
) -> dict:
    """The parent's figures: the verdict grid and loss curves by optimizer × clip. ``losses``:
    the loss series this invocation logged (others, from earlier invocations, are read back)."""
    from bpdiag import plots
    from bpdiag.compare import comparable, varying_axes

    if table is None or table.empty:
        return {}
    figures = {"verdict_grid.png": lambda: plots.verdict_grid(table)}
    axes = varying_axes(table)
    if "optimizer" in axes or "clip" in axes:
        subset = comparable(table, ["optimizer", "clip"])

        def curves():
            histories = {r: losses.get(r) for r in subset["run_id"]}
            histories = {
                r: tracker.loss_history(r) if h is None else h for r, h in histories.items()
            }
            return plots.loss_curves(subset, histories)

        figures["loss_curves.png"] = curves
    return figures
