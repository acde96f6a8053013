"""Lost Dask workers, with a real scheduler and real worker processes started here: a worker
that dies while warming up is replaced and the sweep goes on; a run whose worker is killed for
memory or by a signal is FAILED with that cause in its error."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import free_port, stop

from bpdiag.schema import Tag
from bpdiag.sweep.tracking import Tracker

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "dask").exists(), reason="the dask CLI is missing"),
]


@contextlib.contextmanager
def cluster(workers: list[list[str]], env: dict[str, str] | None = None):
    """A ``dask scheduler`` and one ``dask worker`` per argument list; yields its address."""
    port = free_port()
    env = {**os.environ, **(env or {})}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env,
             "start_new_session": True}  # fmt: skip
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--no-dashboard"], **quiet)]  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.2)
        for args in workers:
            procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads",
                                           "1", "--no-dashboard", *args], **quiet))  # fmt: skip
        yield address
    finally:
        stop(procs)


def _sweep(tmp_path, name: str, base: str, address: str, seeds: int = 1) -> subprocess.Popen:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\nseeds: {list(range(seeds))}\nbase: {{{base}}}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return subprocess.Popen([str(BIN / "bpdiag"), "sweep", str(spec), "--scheduler", address,
                             "--tracking-uri", uri], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _children(tmp_path, name: str, status: str):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tracker.children(tracker.experiment_id(f"bpdiag-{name}", create=False), status)


def test_a_worker_that_dies_warming_up_is_replaced_and_the_sweep_goes_on(tmp_path):
    marker = tmp_path / "died"
    preload = ["--preload", str(HERE / "die_warming.py")]
    with cluster([preload, preload], env={"BPDIAG_TEST_DIE_ONCE": str(marker)}) as address:
        proc = _sweep(tmp_path, "warmdeath", "n_samples: 100, width: 8, steps: 50", address, 4)
        out, err = proc.communicate(timeout=240)
    assert marker.exists(), "no worker died: the test tested nothing"
    assert proc.returncode == 0, err[-3000:]
    assert len(_children(tmp_path, "warmdeath", "FINISHED")) == 4


# A worker is lost for good on its first death: the run is FAILED at once, with the cause.
ONE_LIFE = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}


def test_a_run_killed_for_memory_fails_with_the_cause(tmp_path):
    # ≈ 1.3 GiB of weights alone (width 6000, 5 hidden matrices), on a worker allowed 700 MB
    with cluster([["--memory-limit", "700MB"]], env=ONE_LIFE) as address:
        proc = _sweep(tmp_path, "oom", "n_samples: 100, width: 6000, depth: 6, steps: 5, "
                      "optimizer: sgd", address)  # fmt: skip
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err[-3000:]
    [failed] = _children(tmp_path, "oom", "FAILED")
    error = failed.data.tags[Tag.ERROR]
    assert "restarted by its nanny for memory" in error and "KilledWorker" in error, error


def test_a_run_whose_worker_is_killed_by_a_signal_fails_with_the_signal(tmp_path):
    from distributed import Client

    with cluster([[]], env=ONE_LIFE) as address:
        proc = _sweep(tmp_path, "sigkill", "n_samples: 100, width: 8, steps: 2000000", address)
        with Client(address, timeout="30s") as client:
            deadline = time.time() + 180
            while time.time() < deadline and not any(client.processing().values()):
                time.sleep(0.2)  # until the run is training
            [(worker, busy)] = client.processing().items()
            assert busy, "the run never started"
            os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    [failed] = _children(tmp_path, "sigkill", "FAILED")
    assert "killed by signal 9" in failed.data.tags[Tag.ERROR], failed.data.tags[Tag.ERROR]
