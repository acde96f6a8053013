"""One run on a worker: the same RunConfig gives bit-identical results in this process, in a
fresh process and on a Dask worker; a failure is a FAILED result, never an exception."""

import pickle
import subprocess
import sys

import numpy as np

from bpdiag.sweep.config import RunConfig
from bpdiag.sweep.execute import execute

CFG = RunConfig(dataset="spirals", n_samples=200, depth=4, width=16, steps=300, record_every=7,
                optimizer="adam", lr=0.01, clip="norm", clip_value=0.5, norm="batchnorm",
                residual=True, seed=3)  # fmt: skip


def _fingerprint(result) -> tuple:
    assert result.status == "FINISHED", result.error
    return (result.label, result.layers.to_numpy(float).tobytes(),
            result.steps.to_numpy(float).tobytes(),
            tuple(repr(v) for k, v in sorted(result.summary.items())  # repr: nan == nan
                  if k not in ("train_seconds", "steps_per_second")))  # fmt: skip


def test_the_same_config_gives_the_same_bits_everywhere(tmp_path):
    here = _fingerprint(execute(CFG, figures=False))
    code = ("import pickle, sys; from bpdiag.sweep.execute import execute; "
            "from bpdiag.sweep.config import RunConfig; "
            f"sys.stdout.buffer.write(pickle.dumps(execute(RunConfig(**{CFG.model_dump()!r}), "
            "figures=False)))")  # fmt: skip
    fresh = pickle.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                        check=True, cwd=tmp_path).stdout)  # fmt: skip
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:  # fmt: skip
        remote = client.submit(execute, CFG, False, pure=False).result()
    assert here == _fingerprint(fresh) == _fingerprint(remote)


def test_early_stopping_does_not_depend_on_the_clock(monkeypatch):
    """Chunks are sized by the net, never by wall time: with a clock that runs 1000× faster
    or slower, a hook that stops training stops it at the same step."""
    import time

    from bpdiag import MLP, train
    from bpdiag.hooks import EarlyStop

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, 3)), rng.uniform(size=(64, 1))
    real = time.perf_counter
    done = []
    for factor in (1.0, 1e-3, 1e3):
        monkeypatch.setattr(time, "perf_counter", lambda f=factor: real() * f)
        net = MLP([3, 8, 8, 1], seed=1)
        hist = train(net, X, Y, steps=20_000, lr=0.05, hooks=[EarlyStop(0.6)])
        done.append((hist.steps_done, net.theta.tobytes()))
    assert done[0] == done[1] == done[2] and done[0][0] < 20_000


def test_a_failing_run_is_a_failed_result():
    # a config validation now refuses (6 training rows: batches of 5 and 1), as an older
    # bpdiag's store or a hand-built one might still hold it
    bad = RunConfig.model_construct(**{**RunConfig().model_dump(), "dataset": "spirals",
                                       "n_samples": 8, "depth": 3, "width": 4,
                                       "norm": "batchnorm", "batch_size": 5, "steps": 3})  # fmt: skip
    result = execute(bad, figures=False)
    assert result.status == "FAILED" and "batchnorm needs at least 2 rows" in result.error
