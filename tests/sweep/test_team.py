"""The team set-up, for real: PostgreSQL behind an MLflow tracking server, a Dask scheduler and
two Dask workers, all started here on 127.0.0.1; bpdiag drives sweeps into it from outside.
The fixture runs the README's "Scale out" lines themselves. Skipped where PostgreSQL's server
programs or the psycopg driver are not installed (``.ci/run`` installs Debian's)."""

import glob
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from processes import free_port, stop

from bpdiag.schema import Tag
from bpdiag.sweep.config import load_spec
from bpdiag.sweep.tracking import Tracker

BIN = Path(sys.executable).parent


def _pg_bin(name: str) -> str | None:
    """Debian keeps PostgreSQL's server programs off PATH, in /usr/lib/postgresql/N/bin."""
    debian = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return debian[-1] if debian else shutil.which(name)


PG = {name: _pg_bin(name) for name in ("initdb", "pg_ctl", "createdb")}
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not all(PG.values()) or (os.geteuid() == 0 and shutil.which("runuser") is None)
    or not (BIN / "dask").exists(),
    reason="PostgreSQL's server programs, runuser (as root) or the dask CLI not installed",
)]  # fmt: skip
psycopg = pytest.importorskip("psycopg", reason="bpdiag[postgres] (psycopg) not installed")


README = Path(__file__).parents[2] / "README.md"
PORTS = {"5432": "pg", "5000": "mlflow", "8786": "dask"}
AS_POSTGRES = ("initdb", "pg_ctl", "createdb")  # PostgreSQL refuses to run as root


def readme_lines() -> list[str]:
    """The shell lines of the README's "Scale out" block, comments dropped."""
    section = README.read_text().split("## Scale out", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = (re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines())
    return [line for line in lines if line]


def _wait(check, what: str, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{what} did not start within {seconds:g} s")


@pytest.fixture(scope="module")
def team():
    """Run the README's lines in a fresh folder, with free ports for the documented ones."""
    # Not under pytest's tmp folder: its parents are private to root, and PostgreSQL runs as
    # the ``postgres`` user there.
    root = Path(tempfile.mkdtemp(prefix="bpdiag-team-"))
    owner = "postgres" if os.geteuid() == 0 else None
    if owner:
        shutil.chown(root, owner)
    ports = {name: str(free_port()) for name in PORTS.values()}
    env = {**os.environ, "PATH": f"{Path(PG['initdb']).parent}:{BIN}:{os.environ['PATH']}"}
    procs: list[subprocess.Popen] = []
    sweep = None
    try:
        for line in readme_lines():
            line = re.sub(r"\b(5432|5000|8786)\b", lambda m: ports[PORTS[m[1]]], line)
            if line.startswith("bpdiag sweep"):
                sweep = shlex.split(line)
                continue
            cmd = ["bash", "-c", f"exec {line.removesuffix('&').strip()}"]
            if owner and line.split()[0] in AS_POSTGRES:
                cmd = ["runuser", "-u", owner, "--", "env", f"PATH={env['PATH']}", *cmd]
            if not line.endswith("&"):
                subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
                continue
            for _ in range(2 if line.startswith("dask worker") else 1):  # two workers
                procs.append(subprocess.Popen(cmd, cwd=root, env=env, start_new_session=True,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            if line.startswith("dask scheduler"):
                _wait(lambda: socket.create_connection(("127.0.0.1", int(ports["dask"])), 1),
                      "dask scheduler")  # fmt: skip
        assert sweep, "the README's Scale out block has no bpdiag sweep line"
        url = f"http://127.0.0.1:{ports['mlflow']}"
        _wait(lambda: urllib.request.urlopen(f"{url}/health", timeout=1).status == 200,
              "mlflow server")  # fmt: skip
        yield {"tracking": url, "sweep": sweep,
               "backend": f"postgresql://bpdiag@127.0.0.1:{ports['pg']}/mlflow"}  # fmt: skip
    finally:
        stop(procs)
        pg_stop = [PG["pg_ctl"], "-D", str(root / "pgdata"), "-m", "immediate", "stop"]
        subprocess.run(["runuser", "-u", owner, "--", *pg_stop] if owner else pg_stop,
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _sweep(team, spec, **kw) -> subprocess.Popen:
    """The README's sweep line with ``spec`` for its sweep file."""
    args = [str(spec) if arg.endswith(".yaml") else arg for arg in team["sweep"][1:]]
    cmd = [str(BIN / "bpdiag"), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _spec(tmp_path, name: str, seeds: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nseeds: {list(range(seeds))}\nbase: {{n_samples: 100, "
                    "width: 8, steps: 150}\nparameters:\n  depth: {values: [3, 6]}\n")  # fmt: skip
    return path


def _one_finished_per_key(tracker, exp, n_runs) -> None:
    keys = [r.data.tags[Tag.RUN_KEY] for r in tracker.children(exp, "FINISHED")]
    assert len(keys) == n_runs == len(set(keys))
    assert not tracker.children(exp, "RUNNING")


def test_a_sweep_completes_on_the_cluster_into_postgres(team, tmp_path):
    spec = _spec(tmp_path, "team", 2)
    proc = _sweep(team, spec)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    tracker = Tracker(team["tracking"])
    exp = tracker.experiment_id("bpdiag-team", create=False)
    _one_finished_per_key(tracker, exp, len(load_spec(spec)[1]))
    workers = {r.data.tags[Tag.WORKER] for r in tracker.children(exp, "FINISHED")}
    assert len(workers) == 2  # both dask workers trained runs
    with psycopg.connect(team["backend"]) as conn:
        assert (
            conn.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0] >= 4
        )


def test_a_killed_driver_resumes_on_the_cluster(team, tmp_path):
    spec = _spec(tmp_path, "teamkill", 6)
    n_runs = len(load_spec(spec)[1])
    tracker = Tracker(team["tracking"])
    proc = _sweep(team, spec, start_new_session=True)
    deadline, exp = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:
        exp = exp or tracker.experiment_id("bpdiag-teamkill", create=False)
        if exp and len(tracker.children(exp, "FINISHED")) >= 2:
            break
        time.sleep(0.3)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver; the cluster's workers stay up
    proc.communicate(timeout=30)
    again = _sweep(team, spec)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    _one_finished_per_key(tracker, exp, n_runs)


def test_two_drivers_on_one_spec_train_each_run_once(team, tmp_path):
    spec = _spec(tmp_path, "teamtwice", 3)
    first, second = _sweep(team, spec), _sweep(team, spec)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), [e[-2000:] for _, e in outs]
    tracker = Tracker(team["tracking"])
    exp = tracker.experiment_id("bpdiag-teamtwice", create=False)
    _one_finished_per_key(tracker, exp, len(load_spec(spec)[1]))
