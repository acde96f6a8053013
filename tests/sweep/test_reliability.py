"""Sweeps under concurrency, signals and failures, with real processes on a real SQLite store:
two sweeps of one spec at once train each run once; a dead sweep's leftovers are reaped; SIGTERM
cleans up like Ctrl-C; failed runs give exit status 1 with a tally."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bpdiag.cli import main
from bpdiag.schema import Tag
from bpdiag.sweep import run_sweep
from bpdiag.sweep.config import load_spec
from bpdiag.sweep.tracking import Tracker

BPDIAG = str(Path(sys.executable).parent / "bpdiag")


def _spec(tmp_path, name, text) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{text}")
    return path


def _roles(tracker, exp, role, status=None):
    filt = f"tags.`{Tag.ROLE}` = '{role}'" + (
        f" and attributes.status = '{status}'" if status else ""
    )
    return tracker.runs(exp, filt)


@pytest.mark.slow  # separate processes for tens of seconds
def test_two_sweeps_of_one_spec_at_once_train_each_run_once(tmp_path):
    spec = _spec(tmp_path, "twice", "seeds: [0, 1, 2]\nbase: {n_samples: 100, width: 8, steps: 60}\n"
                 "parameters:\n  depth: {values: [3, 5]}\n  activation: {values: [tanh, relu]}\n")  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("bpdiag-twice")  # the store exists: this is about the runs
    procs = [subprocess.Popen([BPDIAG, "sweep", str(spec), "--tracking-uri", uri, "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    n_runs = len(load_spec(spec)[1])
    finished = tracker.children(exp, "FINISHED")
    keys = [r.data.tags[Tag.RUN_KEY] for r in finished]
    assert len(keys) == n_runs == len(set(keys))  # one FINISHED child per run_key
    assert not tracker.children(exp, "RUNNING") and not tracker.children(exp, "KILLED")
    assert len(_roles(tracker, exp, "sweep", "FINISHED")) == 2
    # both parents' summaries count every run once
    for parent in _roles(tracker, exp, "sweep"):
        csv = tracker.client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path))
        assert sorted(Path(csv).read_text().splitlines()[1:]).__len__() == n_runs


def test_a_dead_sweeps_parent_and_claims_are_reaped_and_its_runs_trained(tmp_path):
    """A sweep on another host that stopped beating: past the lease its parent and unfinished
    children become KILLED, and the next sweep trains what it had claimed."""
    spec = _spec(tmp_path, "dead", "base: {n_samples: 100, width: 4, depth: 2, steps: 5}\n"
                 "parameters:\n  activation: {values: [tanh, relu]}\n")  # fmt: skip
    parsed, runs = load_spec(spec)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id(parsed.experiment_name)
    ghost = tracker.start_parent(exp, parsed, spec.read_text(), len(runs), 0)
    tracker.client.set_tag(ghost, Tag.DRIVER, "elsewhere.example:4242")
    tracker.client.set_tag(ghost, Tag.HEARTBEAT, f"{time.time() - 120:.3f}")
    claimed = tracker.claim(exp, ghost, parsed.name, runs)
    outcome = run_sweep(spec, tracking_uri=uri, workers=1, lease=60.0)
    assert outcome.finished == len(runs) and outcome.failed == 0
    assert tracker.client.get_run(ghost).info.status == "KILLED"
    assert {tracker.client.get_run(r).info.status for r in claimed.values()} == {"KILLED"}
    assert len(tracker.children(exp, "FINISHED")) == len(runs)


def test_a_live_sweeps_runs_are_waited_for(tmp_path):
    """Runs a live sweep (fresh heartbeat) has claimed are left to it: this sweep trains the
    rest, then waits; here the other sweep dies, its lease runs out and this one takes over."""
    spec = _spec(tmp_path, "wait", "base: {n_samples: 100, width: 4, depth: 2, steps: 5}\n"
                 "parameters:\n  activation: {values: [tanh, relu, sigmoid]}\n")  # fmt: skip
    parsed, runs = load_spec(spec)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id(parsed.experiment_name)
    other = tracker.start_parent(exp, parsed, spec.read_text(), len(runs), 0)
    tracker.client.set_tag(other, Tag.DRIVER, "elsewhere.example:4242")
    tracker.claim(exp, other, parsed.name, runs[:1])
    seen = []
    outcome = run_sweep(spec, tracking_uri=uri, workers=1, lease=8.0,
                        on_start=lambda out, n: seen.append(out.waiting))  # fmt: skip
    assert seen == [1] and outcome.finished == len(runs)
    assert tracker.client.get_run(other).info.status == "KILLED"
    keys = [r.data.tags[Tag.RUN_KEY] for r in tracker.children(exp, "FINISHED")]
    assert sorted(keys) == sorted(c.run_key for c in runs)


@pytest.mark.slow  # separate processes for tens of seconds
def test_sigterm_stops_the_sweep_cleanly(tmp_path):
    spec = _spec(tmp_path, "term", "seeds: [0, 1, 2, 3]\nbase: {n_samples: 200, width: 16, "
                 "steps: 400}\nparameters:\n  depth: {values: [4, 8]}\n")  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = subprocess.Popen([BPDIAG, "sweep", str(spec), "--tracking-uri", uri, "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    tracker, exp = Tracker(uri), None
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            exp = exp or tracker.experiment_id("bpdiag-term", create=False)
            if exp and tracker.children(exp, "FINISHED"):
                break
        except Exception:  # the store is being created
            pass
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)  # the driver alone, as `timeout` or a scheduler sends it
    t = time.time()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and time.time() - t < 30
    assert "Traceback" not in err and err.strip().startswith("error: interrupted"), err
    assert not tracker.children(exp, "RUNNING")
    assert {r.info.status for r in _roles(tracker, exp, "sweep")} == {"KILLED"}
    resumed = run_sweep(spec, tracking_uri=uri, workers=2)  # and it resumes
    assert resumed.skipped >= 1 and resumed.failed == 0


def test_failed_runs_exit_with_status_1_and_a_tally(tmp_path):
    # 8 blobs leave 2 test rows for 4 classes: the split fails in the worker, for every run
    spec = _spec(tmp_path, "fail", "base: {dataset: blobs, n_samples: 8, width: 4, depth: 2, "
                 "steps: 5}\nparameters:\n  activation: {values: [tanh, relu]}\n")  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--workers", "1", "--tracking-uri", uri])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "2 of 2 runs failed" in text and "2× ValueError: The test_size = 2" in text


def test_a_child_whose_artifacts_cannot_be_written_fails_alone(tmp_path):
    """The artifact root is a file while the second result is logged (moved back after it):
    that child fails, with the error, and the sweep goes on."""
    from mlflow.entities import ViewType

    spec = _spec(tmp_path, "art", "base: {n_samples: 100, width: 4, depth: 2, steps: 5}\n"
                 "parameters:\n  activation: {values: [tanh, relu, sigmoid]}\n")  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = Tracker(uri)
    art, aside = tmp_path / "art", tmp_path / "art.aside"
    exp = tracker.client.create_experiment("bpdiag-art", artifact_location=str(art))
    seen = []

    def in_the_way(result):  # called after each result is logged, in the driver
        seen.append(result)
        if len(seen) == 1:  # a file where the next child's artifact folder goes
            art.rename(aside)
            art.write_text("in the way")
        elif len(seen) == 2:
            art.unlink()
            aside.rename(art)

    outcome = run_sweep(spec, tracking_uri=uri, workers=1, on_result=in_the_way)
    assert outcome.failed == 1 and outcome.finished == 2
    assert [r.status for r in seen] == ["FINISHED", "FAILED", "FINISHED"]
    (victim,) = tracker.runs(exp, f"tags.`{Tag.RUN_KEY}` = '{seen[1].run_key}'")
    assert victim.info.status == "FAILED" and "Traceback" in victim.data.tags[Tag.ERROR]
    assert len(tracker.children(exp, "FINISHED")) == 2 and not tracker.children(exp, "RUNNING")
    every = tracker.client.search_runs([exp], run_view_type=ViewType.ALL)  # deleted runs too
    assert not [r for r in every if r.info.status == "RUNNING"]
    assert tracker.client.get_run(outcome.parent_run_id).info.status == "FINISHED"


def _started(proc, tmp_path, name) -> None:
    """Wait until the sweep's parent run exists (the workers are then starting or warming)."""
    tracker, deadline = Tracker(f"sqlite:///{tmp_path / 'm.db'}"), time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            exp = tracker.experiment_id(f"bpdiag-{name}", create=False)
            if exp and _roles(tracker, exp, "sweep"):
                return
        except Exception:  # the store is being created
            pass
        time.sleep(0.2)
    raise AssertionError(f"the sweep never started: {proc.poll()} {proc.communicate()[1][-2000:]}")


def _compiling(cache) -> list:
    """Processes still compiling bpdiag's kernels into ``cache``."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("NUMBA_CACHE_DIR") == str(cache) and "compiled" in " ".join(
                p.cmdline()
            ):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow  # a cold start of two workers, twice
def test_ctrl_c_during_a_cold_warm_up_stops_at_once_and_leaves_nothing(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while a worker
    compiles the kernels into an empty cache; pressed once, then twice on a second sweep."""
    spec = _spec(tmp_path, "cold", "seeds: [0, 1]\nbase: {n_samples: 100, width: 8, steps: 50}\n")
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = Tracker(uri)
    for presses in (1, 2):
        proc = subprocess.Popen([BPDIAG, "sweep", str(spec), "--tracking-uri", uri, "--workers",
                                 "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True)  # fmt: skip
        _started(proc, tmp_path, "cold")
        deadline = time.time() + 60
        while not _compiling(cache) and time.time() < deadline:
            time.sleep(0.1)  # until a worker compiles the kernels into the empty cache
        assert _compiling(cache), "no worker compiled: the test tested nothing"
        for _ in range(presses):
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.3)
        t = time.time()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and time.time() - t < 20, err[-2000:]
        assert "Traceback" not in err and "UserWarning" not in err, err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "interrupted" in lines[0], err
        deadline = time.time() + 10
        while _compiling(cache) and time.time() < deadline:
            time.sleep(0.2)
        assert not _compiling(cache), "a compile outlived the interrupted sweep"
    exp = tracker.experiment_id("bpdiag-cold", create=False)
    # once: all KILLED; twice: it stopped at once and left its runs RUNNING for the next sweep
    resumed = run_sweep(spec, tracking_uri=uri, workers=2)
    assert resumed.finished == 2 and not tracker.children(exp, "RUNNING")
    assert "RUNNING" not in {r.info.status for r in _roles(tracker, exp, "sweep")}


def _spawned(proc) -> list:
    """The Dask worker processes a sweep has spawned so far (not multiprocessing's tracker)."""
    import psutil

    found = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            line = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in line and "resource_tracker" not in line:
            found.append(p)
    return found


@pytest.mark.slow  # a cluster's start, several times
@pytest.mark.parametrize("wait", [0.0, 0.5, 1.5])
def test_ctrl_c_while_the_workers_start_ends_with_one_line(tmp_path, wait):
    """Ctrl-C from a terminal reaches the workers' processes too; while they are being spawned
    or import their modules, only the driver takes it: one line, status 130, within seconds."""
    spec = _spec(tmp_path, "boot", "base: {n_samples: 100, width: 8, steps: 2000}\n")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = subprocess.Popen([BPDIAG, "sweep", str(spec), "--tracking-uri", uri, "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 120
    while not _spawned(proc) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert _spawned(proc), f"no worker was started: {proc.communicate()[1][-2000:]}"
    time.sleep(wait)
    assert proc.poll() is None, f"it ended before it could be stopped: {proc.communicate()}"
    os.killpg(proc.pid, signal.SIGINT)
    t = time.time()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - t < 15, err[-2000:]
    assert "Traceback" not in err and "UserWarning" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "interrupted" in lines[0], err
    resumed = run_sweep(spec, tracking_uri=uri, workers=2)
    tracker = Tracker(uri)
    exp = tracker.experiment_id("bpdiag-boot", create=False)
    assert resumed.finished + resumed.skipped == 1 and not tracker.children(exp, "RUNNING")
    assert "RUNNING" not in {r.info.status for r in _roles(tracker, exp, "sweep")}
