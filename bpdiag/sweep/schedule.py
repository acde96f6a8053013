"""Where the runs train: Dask workers, started and warmed in the background, fed the runs.

Workers: a ``LocalCluster`` of one single-threaded process per core unless a scheduler address
is given (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``). Each worker loads the Numba kernels
before its first task, one worker per machine at a time, so that a fresh machine compiles once
without workers racing on the on-disk cache (``execute.warm_up``). Nothing here touches the
MLflow store.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from bpdiag.sweep.config import RunConfig
from bpdiag.sweep.execute import RunResult, execute, warm_up


def scheduler_address(scheduler: str | None) -> str | None:
    return scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


@dataclass
class Workers:
    """A Dask client whose workers are all warm, and the LocalCluster it owns (if any)."""

    client: object  # distributed.Client
    cluster: object | None  # distributed.LocalCluster, or None for an outside scheduler
    count: int
    warm_seconds: float

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def results(self, todo: list[RunConfig]) -> Iterator[RunResult]:
        """Train every config of ``todo``, the costliest first, and yield each result as it
        arrives; a worker that dies or a task that cannot run gives a FAILED result."""
        from distributed import as_completed

        futures = {
            self.client.submit(execute, cfg, key=f"bpdiag-run-{cfg.run_key}-{time.time_ns()}",
                               pure=False): cfg
            for cfg in sorted(todo, key=_cost, reverse=True)
        }  # fmt: skip
        for future in as_completed(futures):
            cfg = futures.pop(future)
            try:
                result = future.result()
            except Exception as err:
                result = RunResult(cfg, "FAILED", error=f"{type(err).__name__}: {err}")
            future.release()
            yield result


class Startup:
    """Workers being started and warmed in a background thread (the store opens meanwhile)."""

    def __init__(self, scheduler: str | None, workers: int | None) -> None:
        self._parts: list[object] = []  # the client and cluster, as soon as they exist
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            self.future = pool.submit(_ready, scheduler, workers, self._parts)
        finally:
            pool.shutdown(wait=False)

    def result(self) -> Workers:
        return self.future.result()

    def abort(self) -> None:
        """Close what has been started, without waiting for the warm-up (an interrupted sweep
        on a fresh machine would otherwise wait out the compile)."""
        if self.future.done() and self.future.exception() is None:
            self.future.result().close()
            return
        for part in reversed(list(self._parts)):  # the cluster, then the client
            with contextlib.suppress(Exception):
                part.close()


def start(scheduler: str | None, workers: int | None) -> Startup:
    """Start and warm the workers in a background thread."""
    return Startup(scheduler, workers)


def start_closing(workers: Workers) -> Future[None]:
    """Close the workers in a background thread."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(workers.close)
    finally:
        pool.shutdown(wait=False)


def _ready(scheduler: str | None, workers: int | None, parts: list[object]) -> Workers:
    import logging

    from distributed import Client, LocalCluster

    address = scheduler_address(scheduler)
    if address:
        client, cluster = Client(address, timeout="30s"), None
    else:
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address="127.0.0.1:0",
                               silence_logs=logging.ERROR)  # fmt: skip
        parts.append(cluster)
        client = Client(cluster)
    parts.insert(0, client)
    try:
        t = time.perf_counter()
        if not client.scheduler_info()["workers"]:
            client.wait_for_workers(1, timeout=60)
        count = len(client.run(warm_up, cluster is not None))
    except BaseException:
        Workers(client, cluster, 0, 0.0).close()
        raise
    return Workers(client, cluster, count, time.perf_counter() - t)


def _cost(cfg: RunConfig) -> float:
    """Multiply-adds of a run, roughly: the longest runs go first so the last ones are short."""
    return cfg.steps * cfg.depth * cfg.width * (cfg.width + cfg.batch_size)
