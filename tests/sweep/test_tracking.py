"""Reaching the store: unusable stores fail within seconds with a message naming them; a new
SQLite store created by several processes at once is migrated once."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bpdiag.cli import main
from bpdiag.sweep.tracking import StoreError, Tracker, sqlite_path

ROOT = os.geteuid() == 0  # root writes where permissions say it may not


def _spec(tmp_path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase: {n_samples: 100, width: 4, depth: 2, steps: 5}\n")
    return path


def _sweep(tmp_path, uri, *flags):
    t = time.perf_counter()
    result = CliRunner().invoke(main, ["sweep", str(_spec(tmp_path)), "--tracking-uri", uri,
                                       "--workers", "1", *flags])  # fmt: skip
    return result, time.perf_counter() - t


def test_sqlite_paths():
    assert sqlite_path("sqlite:////tmp/a/m.db") == Path("/tmp/a/m.db")
    assert sqlite_path("sqlite:///m.db") == Path("m.db").absolute()
    assert sqlite_path("sqlite:///:memory:") is None


def test_a_sqlite_store_in_a_missing_folder_fails_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'nowhere' / 'm.db'}"
    result, seconds = _sweep(tmp_path, uri)
    assert result.exit_code == 1 and seconds < 20
    assert f"the folder {tmp_path / 'nowhere'} does not exist" in result.output
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.skipif(ROOT, reason="root may write into a read-only folder")
def test_a_sqlite_store_in_a_read_only_folder_fails_at_once(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="cannot write in the folder"):
            Tracker(f"sqlite:///{folder / 'm.db'}").probe()
    finally:
        folder.chmod(0o755)


def test_a_closed_port_fails_at_once(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    result, seconds = _sweep(tmp_path, f"http://127.0.0.1:{port}")
    assert result.exit_code == 1 and seconds < 20, result.output
    assert f"store http://127.0.0.1:{port}: cannot connect" in result.output


def test_a_server_that_never_answers_fails_after_the_timeout(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []
    stop = threading.Event()

    def accept():  # accept connections, read nothing, answer nothing
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        result, seconds = _sweep(tmp_path, uri, "--store-timeout", "1")
        assert result.exit_code == 1 and seconds < 20, result.output
        assert f"store {uri}: no answer within 1 s" in result.output
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.slow  # separate processes for tens of seconds
def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    code = ("import sys; from bpdiag.sweep.tracking import Tracker; t = Tracker(sys.argv[1]); "
            "t.probe(); print(t.experiment_id('bpdiag-race'))")  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert len({out.strip().splitlines()[-1] for out, _ in outs}) == 1  # one experiment


def test_an_experiment_created_by_another_sweep_a_moment_ago_is_shared(tmp_path):
    """Two sweeps of one spec look the experiment up, find none, and both create it."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    ours, theirs = Tracker(uri), Tracker(uri)
    look_up = ours.client.get_experiment_by_name

    def look_up_then_lose_the_race(name):
        found = look_up(name)
        theirs.experiment_id(name)  # the other sweep creates it between our look-up and ours
        return found

    ours.client.get_experiment_by_name = look_up_then_lose_the_race
    exp_id = ours.experiment_id("bpdiag-race")
    assert exp_id == theirs.experiment_id("bpdiag-race", create=False) is not None


def test_artifacts_that_cannot_be_written_fail_before_any_run_is_made(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = Tracker(uri)
    exp = tracker.client.create_experiment("bpdiag-s", artifact_location=str(blocker / "art"))
    result, seconds = _sweep(tmp_path, uri)
    assert result.exit_code == 1 and seconds < 20, result.output
    assert f"cannot write in {blocker}" in " ".join(result.output.split())
    assert not tracker.runs(exp)  # no parent left RUNNING, no claims


_CREATE = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "from bpdiag.sweep.tracking import Tracker; Tracker(sys.argv[1]).client")  # fmt: skip


def _creating(folder: Path) -> list[Path]:
    return sorted(folder.glob(".new.db.*.creating*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_store_creation_cut_short_leaves_no_half_made_store(tmp_path, sig):
    """Ctrl-C or a kill while MLflow builds a new database (seconds of migrations) leaves no
    file that later sweeps would take for a store; the next process builds a whole one."""
    db = tmp_path / "new.db"
    proc = subprocess.Popen([sys.executable, "-c", _CREATE, f"sqlite:///{db}"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 60
    while not (_creating(tmp_path) or db.exists()) and proc.poll() is None:
        assert time.time() < deadline, "no store was being made"
        time.sleep(0.01)
    assert proc.poll() is None, f"it ended before the signal: {proc.communicate()[1][-2000:]}"
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode != 0, "the creation finished before the signal: it tested nothing"
    assert not db.exists()
    if sig == signal.SIGINT:
        assert not _creating(tmp_path)  # it cleaned up after itself
    tracker = Tracker(f"sqlite:///{db}")
    assert tracker.experiment_id("bpdiag-after")  # a whole, migrated store
    assert db.exists() and not _creating(tmp_path)
