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
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from bpdiag.sweep.config import RunConfig
from bpdiag.sweep.execute import RunResult, execute, warm_up

WARM_ATTEMPTS = 3  # rounds of warm-up for workers that die or fail while warming
WARM_REJOIN_S = 30  # how long to wait for their nannies to start them again
NANNY_POLLS = 8  # reads of a dead worker's nanny's log, 0.25 s apart, for how it died


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
                error = f"{type(err).__name__}: {err}"
                cause = death_cause(self.client, err)
                # the cause last: the CLI's failure tally shows each error's last line
                result = RunResult(cfg, "FAILED", error=f"{error}\n{cause}" if cause else error)
            future.release()
            yield result


class Startup:
    """Workers being started and warmed in a background thread (the store opens meanwhile)."""

    def __init__(self, scheduler: str | None, workers: int | None) -> None:
        self._parts: list[object] = []  # the client and cluster, as soon as they exist
        self._lock = threading.Lock()
        self._aborted = False
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            with _sigint_blocked_in_new_threads():
                self.future = pool.submit(_ready, scheduler, workers, self._keep)
        finally:
            pool.shutdown(wait=False)

    def result(self) -> Workers:
        return self.future.result()

    def abort(self) -> None:
        """Stop now: close what has been started and what is still to start, without waiting
        for the warm-up (it would hold an interrupted sweep for seconds, or on a fresh machine
        for the whole compile)."""
        with self._lock:
            self._aborted = True
            parts = list(self._parts)  # the cluster if it is local, then the client
        if self.future.done() and self.future.exception() is None:
            parts = [self.future.result().cluster, self.future.result().client]
        for part in parts:
            with contextlib.suppress(Exception):
                _kill_local_workers(part)
        for part in reversed(parts):  # the client, then the cluster, as ``Workers.close``
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()

    def _keep(self, part: object) -> None:
        """Note a part just started (closed at once if the start was aborted meanwhile)."""
        with self._lock:
            if not self._aborted:
                self._parts.append(part)
                return
        with contextlib.suppress(Exception):
            part.close()
        raise _AbortedError


class _AbortedError(Exception):
    """The start of the workers was aborted."""


def _kill_local_workers(cluster: object) -> None:
    """SIGKILL a LocalCluster's worker processes (they hold nothing of the store's): a worker
    warming up does not answer the cluster's request to close until it is warm."""
    from distributed import LocalCluster

    if not isinstance(cluster, LocalCluster):
        return
    for nanny in list(cluster.workers.values()):
        with contextlib.suppress(Exception):
            if nanny.pid:
                os.kill(nanny.pid, signal.SIGKILL)


@contextlib.contextmanager
def _sigint_blocked_in_new_threads() -> Iterator[None]:
    """Threads started in this block, and the threads and processes they start (the
    LocalCluster's event loop, its worker processes), keep SIGINT blocked for good.

    A terminal's Ctrl-C goes to its whole process group: the sweep must stop its workers, not
    have them interrupted too (a worker interrupted while it imports prints a traceback). The
    calling thread blocks SIGINT only for the block's microseconds: a Ctrl-C then waits, not
    lost. multiprocessing's resource tracker is started first, as starting it unblocks SIGINT
    in the thread that starts it."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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


def _ready(scheduler: str | None, workers: int | None, keep: Callable[[object], None]) -> Workers:
    import logging

    from distributed import Client, LocalCluster

    address = scheduler_address(scheduler)
    if address:
        client, cluster = Client(address, timeout="30s"), None
    else:  # quiet: the sweep reports what fails, and the nannies' logs keep every record
        # LocalCluster quiets the handlers only while it is open; a comm that closes after it
        # (the client's, when Ctrl-C stops the start) would still log a traceback at INFO
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address="127.0.0.1:0",
                               silence_logs=logging.CRITICAL)  # fmt: skip
        keep(cluster)
        client = Client(cluster)
    keep(client)
    try:
        t = time.perf_counter()
        if not client.scheduler_info()["workers"]:
            client.wait_for_workers(1, timeout=60)
        count = _warm(client, cluster is not None)
    except BaseException:
        Workers(client, cluster, 0, 0.0).close()
        raise
    return Workers(client, cluster, count, time.perf_counter() - t)


def _warm(client, own_cluster: bool) -> int:
    """Run ``warm_up`` on every worker; returns how many are warm. A worker that dies or fails
    while warming is tried again, as a task would be (its nanny starts a new one), up to
    ``WARM_ATTEMPTS`` rounds; the sweep fails only if no worker could be warmed. Once one is
    warm the runs start without waiting for replacements: a worker that joins later warms
    itself, since ``bpdiag.compiled.ready`` runs before any kernel."""
    warm: set[str] = set()
    errors: dict[str, BaseException] = {}
    for _ in range(WARM_ATTEMPTS):
        # with no worker warm yet, wait for the nannies to restart the ones that died
        rejoin = WARM_REJOIN_S if errors and not warm else 0
        cold = _workers_other_than(client, warm | set(errors), rejoin)
        if not cold:
            break
        done = client.run(warm_up, own_cluster, workers=cold, on_error="return")
        failed = {w: v for w, v in done.items() if isinstance(v, BaseException)}
        warm.update(w for w in done if w not in failed)
        errors.update(failed)
        if not failed:
            break
    if not warm:
        worker, error = next(iter(errors.items()), ("", RuntimeError("no worker joined")))
        raise RuntimeError(f"no Dask worker could be warmed up ({len(errors)} failed; "
                           f"{worker}: {type(error).__name__}: {error})")  # fmt: skip
    return len(warm)


def _workers_other_than(client, known: set[str], wait_s: float) -> list[str]:
    """The workers not in ``known``, waiting up to ``wait_s`` seconds for one to join (a nanny
    restarting a dead worker gives it a new address)."""
    deadline = time.monotonic() + wait_s
    while True:
        others = [w for w in client.scheduler_info()["workers"] if w not in known]
        if others or time.monotonic() >= deadline:
            return others
        time.sleep(0.2)


async def _nanny_logs(client, nanny: str) -> list:
    return await client.rpc(nanny).get_logs(n=200)


def death_cause(client, error: BaseException) -> str:
    """Why the worker behind a ``KilledWorker`` died, from what its nanny told the scheduler
    (a memory-limit restart) or logged (an exit status or a signal); "" if that is unknown."""
    worker = getattr(error, "last_worker", None)
    if worker is None:
        return ""
    pid, name = getattr(worker, "pid", None), f"worker {worker.address}"
    try:
        for _, event in reversed(client.get_events("worker-restart-memory")):
            if event.get("pid") == pid:
                limit = getattr(worker, "memory_limit", 0) or 0
                return (f"{name} (pid {pid}) was restarted by its nanny for memory: "
                        f"{event['rss'] / 2**30:.2f} GiB used, limit {limit / 2**30:.2f} GiB "
                        "(a smaller run, or more memory per worker: dask worker --memory-limit)")  # fmt: skip
        nanny = getattr(worker, "nanny", None)
        for _ in range(NANNY_POLLS if nanny else 0):  # it logs the death as the scheduler hears
            for *_, message in client.sync(_nanny_logs, client, nanny):
                if f"Worker process {pid} " in str(message):
                    return f"{name}: {str(message).split(' - ')[-1].strip()}"
            time.sleep(0.25)
    except Exception:  # noqa: BLE001  (the cause is a courtesy: never fail the sweep over it)
        return ""
    return ""


def _cost(cfg: RunConfig) -> float:
    """Multiply-adds of a run, roughly: the longest runs go first so the last ones are short."""
    return cfg.steps * cfg.depth * cfg.width * (cfg.width + cfg.batch_size)
