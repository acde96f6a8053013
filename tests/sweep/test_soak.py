"""A soak: 500 tiny runs through a real LocalCluster into a real SQLite store, with the memory of
the driver (this process) and of each worker sampled as results arrive. Measured on the 2-core
machine of docs/reliability.md: the driver grows by ~10 MB over the last 400 runs, each worker
stays below ~600 MB; the bounds below leave room for other machines, not for a leak."""

import psutil
import pytest

from bpdiag.sweep import run_sweep

pytestmark = pytest.mark.slow
N_RUNS = 500
DRIVER_GROWTH_MB = 64  # from result 100 to result 500: a leak of 160 KB a run would break it
WORKER_PEAK_MB = 1024


def test_500_runs_finish_with_bounded_memory(tmp_path):
    spec = tmp_path / "soak.yaml"
    spec.write_text(f"name: soak\nseeds: {list(range(N_RUNS))}\nbase: {{n_samples: 64, "
                    "depth: 3, width: 4, steps: 20, record_every: 5}\n")  # fmt: skip
    me = psutil.Process()
    driver: dict[int, float] = {}
    worker_peak = 0.0

    def sample(result) -> None:
        nonlocal worker_peak
        done = len(driver) + 1
        driver[done] = me.memory_info().rss / 2**20
        for child in me.children(recursive=True):
            try:
                worker_peak = max(worker_peak, child.memory_info().rss / 2**20)
            except psutil.Error:
                pass

    outcome = run_sweep(spec, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", workers=2,
                        on_result=sample)  # fmt: skip
    counts = {k: getattr(outcome, k) for k in ("finished", "failed", "skipped", "waiting",
                                                "by_others")}  # fmt: skip
    assert (outcome.finished, outcome.failed) == (N_RUNS, 0), counts  # all of them, if not
    assert len(set(outcome.table["run_key"])) == N_RUNS
    growth = max(driver[n] for n in range(400, N_RUNS + 1)) - driver[100]
    assert growth < DRIVER_GROWTH_MB, f"driver grew {growth:.0f} MB over runs 100..500"
    assert worker_peak < WORKER_PEAK_MB, f"a worker reached {worker_peak:.0f} MB"
