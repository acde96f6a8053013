"""The one writer to MLflow: a parent run per sweep invocation, a nested child per RunConfig.

What is written is declared in ``bpdiag.schema``:
- params: every RunConfig field by name; tags ``schema.Tag``, the notes (``notes``), the run's
  name ``[verdict] what varies · seed`` and its data set as an input;
- step metrics at the record cadence (``schema.STEP_SERIES`` with a key), per-layer series
  downsampled to ``schema.LAYER_POINTS`` records for the layers ``schema.charted_layers``
  picks (``schema.LAYER_SERIES`` with a key, as ``<key>/NN``), depth profiles with step = layer (``schema.PROFILES``), the run's
  summary once (``schema.SUMMARY``) and its timings; finite values only, a diverged run's
  series cut before its ``diverged_step``;
- artifacts: ``gradient_flow.png``, ``grad_norm_vs_depth.png``, ``layers.parquet`` (every
  record of every layer series), ``depth_profile.csv``, ``config.yaml``, ``diagnosis.json``.

A child is marked FINISHED only after everything above is written, so a FINISHED child is
complete; resume skips exactly those run_keys.

Sweeps that share a store (two at once, or one after a killed one) agree through it alone:
- a sweep *claims* each run it will train by creating a child, RUNNING, before training;
  among live claims of one run_key the oldest (start time, then run ID) trains it (``owners``);
  the result goes into a new child with the worker's start and end, which retires the claim
  once complete (``log_child``);
- a parent is *live* while its driver runs: on the driver's host, while that process exists;
  elsewhere, while its heartbeat (renewed every ``LEASE_S``/6) is younger than ``LEASE_S``;
  a dead sweep's parent and its unfinished children become KILLED (``reap``);
- after a child finishes, the other FINISHED children of its run_key are deleted, the newest
  kept (``keep_newest``): one FINISHED child per run_key even if two sweeps raced.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bpdiag.schema import (
    LAYER_POINTS,
    LAYER_SERIES,
    PROFILE_AT,
    PROFILES,
    SHARPNESS_SERIES,
    STEP_SERIES,
    SUMMARY,
    Tag,
    charted_layers,
    log10,
    timing_key,
    verdict_count_key,
)
from bpdiag.sweep.config import RUN_FIELDS
from bpdiag.sweep.execute import RunResult

DEFAULT_URI = "sqlite:///mlflow.db"
STORE_TIMEOUT_S = 10.0  # for the first answer of a store


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message names it and why."""


# the tags a claim is made with (``claim``), which the child that replaces it keeps
_CLAIM_TAGS = (Tag.PARENT, Tag.RUN_KEY, Tag.SWEEP, Tag.ROLE, Tag.VERSION)
LEASE_S = 60.0  # a parent whose heartbeat is older than this, on another host, is dead


def tracking_uri(uri: str | None = None) -> str:
    """The store: ``uri``, else $MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


# MLflow 3 opens experiments, runs and the compare page in its GenAI view (no runs shown)
# unless the address asks for the model-training view.
WORKFLOW = "workflowType=machine_learning"
UI_PORT = 5000


def ui_path(experiment_id: str, run_id: str | None = None) -> str:
    """The UI's address of an experiment's runs table, or of one run, after the host."""
    run = f"/runs/{run_id}" if run_id else ""
    return f"#/experiments/{experiment_id}{run}?{WORKFLOW}"


def compare_path(experiment_id: str, run_ids: list[str]) -> str:
    """The UI's address of the compare page of ``run_ids``, after the host."""
    from urllib.parse import quote

    runs, exps = json.dumps(list(run_ids)), json.dumps([experiment_id])
    return f"#/compare-runs?runs={quote(runs)}&experiments={quote(exps)}&{WORKFLOW}"


def ui_url(experiment_id: str, run_id: str | None = None, host: str = "127.0.0.1",
           port: int = UI_PORT) -> str:  # fmt: skip
    """``ui_path`` on a UI at ``host:port`` (``bpdiag ui`` serves one on 127.0.0.1:5000)."""
    return f"http://{host}:{port}/{ui_path(experiment_id, run_id)}"


def compare_url(experiment_id: str, run_ids: list[str], host: str = "127.0.0.1",
                port: int = UI_PORT) -> str:  # fmt: skip
    """``compare_path`` on a UI at ``host:port``."""
    return f"http://{host}:{port}/{compare_path(experiment_id, run_ids)}"


def _version() -> str:
    from bpdiag import __version__

    return __version__


class Tracker:
    """MLflow access for sweeps. Only the driver holds one."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = tracking_uri(uri)
        self.log_seconds = 0.0  # time spent writing, for --timings

    @functools.cached_property
    def client(self):
        """The MlflowClient, made on first use. Its first use of a SQLite file creates the
        schema (and the folder's files: ``probe`` looks first), so every process, sweep or
        reader, does that under a lock beside the file, one at a time; a new database is made
        whole under a temporary name and then renamed, so that a sweep killed meanwhile leaves
        no half-made store behind."""
        import fcntl
        import logging

        from mlflow import MlflowClient

        for name in ("mlflow", "alembic"):  # after importing mlflow, which sets them to INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        path = sqlite_path(self.uri) if self.uri.lower().startswith("sqlite") else None
        try:
            lock = open(f"{path}.lock", "a") if path else None  # noqa: SIM115
        except OSError:  # no folder, or a read-only one: nothing can be created there anyway
            lock = None
        if lock is None:
            return MlflowClient(tracking_uri=self.uri)
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                _create_sqlite_store(path)
            client = MlflowClient(tracking_uri=self.uri)
            client.search_experiments(max_results=1)  # the store exists and is migrated
        return client

    # ------------------------------------------------------------ reaching the store

    def probe(self, timeout: float = STORE_TIMEOUT_S) -> None:
        """Fail fast, naming the store, where it cannot be used: a SQLite file in a missing or
        read-only folder, a read-only database file, an HTTP server that refuses or does not
        answer within ``timeout`` seconds. Also creates (migrates) a new SQLite store under a
        lock beside it, so two sweeps starting at once on a new store do not both migrate it.
        Raises ``StoreError``."""
        scheme = self.uri.split(":", 1)[0].lower()
        if scheme.startswith("sqlite"):
            self._probe_sqlite()
        elif scheme in ("http", "https"):
            _probe_http(self.uri, timeout)
        else:
            _within(timeout, self.uri, lambda: self.client.search_experiments(max_results=1))

    def _probe_sqlite(self) -> None:
        path = sqlite_path(self.uri)
        if path is None:  # in memory
            return
        folder = path.parent
        if not folder.is_dir():
            raise StoreError(f"store {self.uri}: the folder {folder} does not exist")
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"store {self.uri}: cannot write the database file {path}")
        if not os.access(folder, os.W_OK | os.X_OK):  # SQLite writes its journal beside it
            raise StoreError(f"store {self.uri}: cannot write in the folder {folder}")
        try:
            self.client  # noqa: B018  (creates or migrates the schema, under the lock)
        except Exception as err:
            raise StoreError(f"store {self.uri}: {_last_line(err)}") from None

    def check_artifacts(self, experiment_id: str) -> None:
        """Fail fast where the experiment's artifacts go to a local folder that cannot be
        written (``StoreError``)."""
        location = self.client.get_experiment(experiment_id).artifact_location
        folder = _local_path(location)
        if folder is None:
            return
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise StoreError(f"artifacts of store {self.uri}: cannot write in {existing} "
                             f"(the experiment's artifact location is {location})")  # fmt: skip

    # ------------------------------------------------------------ reading

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        from mlflow.exceptions import MlflowException

        if not create:
            return None
        try:
            return self.client.create_experiment(name, tags={Tag.VERSION: _version()})
        except MlflowException as e:  # another sweep created it a moment ago
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.experiment_id(name, create=False)

    def runs(self, experiment_id: str, filter_string: str = "") -> list:
        """All runs matching the filter (every page)."""
        out, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string, max_results=1000,
                                           page_token=token)  # fmt: skip
            out.extend(page)
            token = page.token
            if not token:
                return out

    def children(self, experiment_id: str, status: str | None = None) -> list:
        """Child runs (bpdiag's per-config runs), optionally only those with ``status``."""
        filt = f"tags.`{Tag.ROLE}` = 'run'"
        if status:
            filt += f" and attributes.status = '{status}'"
        return self.runs(experiment_id, filt)

    def finished_keys(self, experiment_id: str) -> set[str]:
        """The run_keys with a FINISHED child."""
        return {r.data.tags.get(Tag.RUN_KEY) for r in self.children(experiment_id, "FINISHED")}

    # ------------------------------------------------------------ writing

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.log_seconds += time.perf_counter() - start

    def live_parents(self, experiment_id: str, lease: float = LEASE_S) -> tuple[set, list]:
        """(run IDs of the RUNNING parents whose sweep is alive, the RUNNING ones that are not)."""
        now, host = time.time(), socket.gethostname()
        live, dead = set(), []
        for run in self.runs(experiment_id,
                             f"tags.`{Tag.ROLE}` = 'sweep' and attributes.status = 'RUNNING'"):  # fmt: skip
            tags = run.data.tags
            where, _, pid = tags.get(Tag.DRIVER, "").rpartition(":")
            if where == host and pid.isdigit():
                alive = _process_exists(int(pid))
            else:
                beat = _float(tags.get(Tag.HEARTBEAT), run.info.start_time / 1000)
                alive = now - beat < lease
            (live.add(run.info.run_id) if alive else dead.append(run))
        return live, dead

    def reap(self, experiment_id: str, lease: float = LEASE_S) -> set[str]:
        """Dead sweeps' parents, and every RUNNING child whose parent is not live, become
        KILLED. Returns the live parents."""
        live, dead = self.live_parents(experiment_id, lease)
        for run in dead:
            self.client.set_terminated(run.info.run_id, "KILLED")
        for run in self.children(experiment_id, "RUNNING"):
            if run.data.tags.get(Tag.PARENT) not in live:
                self.client.set_terminated(run.info.run_id, "KILLED")
        return live

    def describe(self, experiment_id: str, note: str) -> None:
        """The experiment's description (Markdown, shown above its runs table)."""
        from bpdiag.sweep.notes import NOTE

        self._timed(self.client.set_experiment_tag, experiment_id, NOTE, note)

    def heartbeat(self, parent_id: str) -> None:
        self.client.set_tag(parent_id, Tag.HEARTBEAT, f"{time.time():.3f}")

    def claim(self, experiment_id: str, parent_id: str, sweep: str, configs: list,
              out: dict[str, str] | None = None,
              names: dict[str, str] | None = None) -> dict[str, str]:  # fmt: skip
        """A RUNNING child per config, with its params and tags: run_key → run_id, into
        ``out`` as each is made (so that a caller interrupted midway knows its claims).
        ``names``: run_key → the child's name (``compare.run_names``)."""
        from mlflow.entities import Param

        out = {} if out is None else out
        for cfg in configs:
            tags = {Tag.PARENT: parent_id, Tag.RUN_KEY: cfg.run_key, Tag.SWEEP: sweep,
                    Tag.ROLE: "run", Tag.VERSION: _version()}  # fmt: skip
            name = (names or {}).get(cfg.run_key, cfg.name)
            run_id = self._timed(self.client.create_run, experiment_id, tags=tags,
                                 run_name=name).info.run_id  # fmt: skip
            out[cfg.run_key] = run_id
            self._timed(self.client.log_batch, run_id,
                        params=[Param(k, str(getattr(cfg, k))) for k in RUN_FIELDS])  # fmt: skip
        return out

    def owners(self, experiment_id: str, live: set[str]) -> dict[str, str]:
        """run_key → run_id of the claim that trains it: the oldest RUNNING child of a live
        parent (start time, then run ID)."""
        best: dict[str, tuple] = {}
        for run in self.children(experiment_id, "RUNNING"):
            key = run.data.tags.get(Tag.RUN_KEY)
            if run.data.tags.get(Tag.PARENT) in live and key:
                rank = (run.info.start_time, run.info.run_id)
                best[key] = min(best.get(key, rank), rank)
        return {key: rank[1] for key, rank in best.items()}

    def keep_newest(self, experiment_id: str, run_key: str) -> None:
        """Delete all FINISHED children of ``run_key`` but the newest (start time, run ID)."""
        runs = self.runs(experiment_id, f"tags.`{Tag.ROLE}` = 'run' and attributes.status = "
                                        f"'FINISHED' and tags.`{Tag.RUN_KEY}` = '{run_key}'")  # fmt: skip
        ranked = sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))
        for run in ranked[:-1]:
            self._timed(self.client.delete_run, run.info.run_id)

    def start_parent(
        self, experiment_id: str, spec, spec_text: str, n_runs: int, n_skipped: int
    ) -> str:
        from mlflow.entities import Param

        tags = {Tag.SWEEP: spec.name, Tag.VERSION: _version(), Tag.ROLE: "sweep",
                Tag.DRIVER: f"{socket.gethostname()}:{os.getpid()}",
                Tag.HEARTBEAT: f"{time.time():.3f}"}  # fmt: skip
        run = self.client.create_run(experiment_id, tags=tags,
                                     run_name=f"sweep {spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}")  # fmt: skip
        params = {"sweep": spec.name, "method": spec.method, "runs": n_runs, "skipped": n_skipped,
                  "seeds": ",".join(map(str, spec.seeds)), "description": spec.description[:500]}  # fmt: skip
        try:
            self._timed(self.client.log_batch, run.info.run_id,
                        params=[Param(k, str(v)) for k, v in params.items()])  # fmt: skip
            self._timed(self.client.log_text, run.info.run_id, spec_text, "sweep.yaml")
        except BaseException:
            self.client.set_terminated(run.info.run_id, "FAILED")  # not left RUNNING
            raise
        return run.info.run_id

    def log_child(self, run_id: str, result: RunResult, name: str = "") -> str:
        """Write one run's result and return the child that holds it.

        MLflow cannot move a run's start, and a claim (``claim``, ``run_id``) starts when its
        sweep does; so the result goes into a new run with the claim's tags and params whose
        start and end are the worker's: its name with the verdict first, tags, note, data
        set, metrics, artifacts, then FINISHED/FAILED. Only then is the claim retired
        (KILLED, deleted). If writing fails, the new run is deleted and the error raised:
        the claim stays, for the caller to fail (``fail_child``) or, interrupted, to kill."""
        return self._timed(self._replace_claim, run_id, result, name)

    def _replace_claim(self, claim_id: str, result: RunResult, name: str) -> str:
        from mlflow.entities import Param

        claim = self.client.get_run(claim_id)
        tags = {k: v for k, v in claim.data.tags.items() if k in _CLAIM_TAGS}
        start = int(result.started * 1000) if result.started else None
        child = self.client.create_run(claim.info.experiment_id, start_time=start, tags=tags,
                                       run_name=claim.info.run_name).info.run_id  # fmt: skip
        try:
            params = [Param(k, v) for k, v in claim.data.params.items()]
            self.client.log_batch(child, params=params)
            self._log_child(child, result, name)
        except BaseException as err:
            try:  # best effort: the store may be what failed; none left RUNNING, even deleted
                self.client.set_terminated(child, "FAILED" if isinstance(err, Exception)
                                           else "KILLED")  # fmt: skip
                self.client.delete_run(child)
            except Exception:
                pass
            raise
        self.client.set_terminated(claim_id, "KILLED")  # not left RUNNING among deleted runs
        self.client.delete_run(claim_id)
        return child

    def _log_child(self, run_id: str, result: RunResult, name: str) -> None:
        from mlflow.entities import RunTag

        from bpdiag.sweep.notes import NOTE, child_note

        cfg = result.config
        tags = {Tag.WORKER: result.worker, NOTE: child_note(result)}
        if result.blas:
            tags[Tag.BLAS] = result.blas
        if result.label:
            tags[Tag.DIAGNOSIS] = result.label
            tags[Tag.REASON] = result.reason[:5000]
            tags[Tag.HEADLINE] = result.headline[:5000]
            tags[Tag.TIMELINE] = result.timeline
            tags[Tag.FLAGS] = ",".join(result.flags) or "none"
        label = result.label if result.status == "FINISHED" else "failed"
        self.client.update_run(run_id, name=f"[{label}] {name or cfg.name}")
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items() if v])
        self.client.log_inputs(run_id, datasets=[_dataset_input(cfg)])
        metrics = self.metrics(result)
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
            if result.status == "FINISHED":
                for figure, png in result.figures.items():
                    (folder / figure).write_bytes(png)
                result.layers.to_parquet(folder / "layers.parquet", index=False)
                depth_profiles(result).to_csv(folder / "depth_profile.csv", index=False,
                                              float_format="%.6g")  # fmt: skip
                diagnosis = {"label": result.label, "reason": result.reason,
                             "headline": result.headline, "flags": result.flags,
                             "phases": [{**p, "delta_ratio_median": _json_numbers(
                                 {"r": p["delta_ratio_median"]})["r"]} for p in result.phases],
                             "evidence": _json_numbers(result.evidence)}  # fmt: skip
                (folder / "diagnosis.json").write_text(
                    json.dumps(diagnosis, indent=2, ensure_ascii=False, allow_nan=False),
                    encoding="utf-8",
                )
            else:
                (folder / "error.txt").write_text(result.error or "")
                self.client.log_batch(
                    run_id, tags=[RunTag(Tag.ERROR, (result.error or "")[-4000:])]
                )
            self.client.log_artifacts(run_id, tmp)
        end = int(result.ended * 1000) if result.ended else None
        self.client.set_terminated(run_id, result.status, end_time=end)

    def fail_child(self, run_id: str, error: str) -> None:
        """A child whose result could not be logged: FAILED, the error in its tag (best
        effort: the store may be what failed)."""
        from mlflow.entities import RunTag

        try:
            self.client.log_batch(run_id, tags=[RunTag(Tag.ERROR, error[-4000:])])
        finally:
            self.client.set_terminated(run_id, "FAILED")

    @staticmethod
    def metrics(result: RunResult) -> list:
        """Step series (at the record cadence), per-layer series (downsampled), depth profiles
        (step = layer), the summary and the timings, each under its ``bpdiag.schema`` key.

        A diverged run's series stop before its ``diverged_step`` and its end-of-training
        losses are left out: the overflowing numbers (1e266, ±inf) would read as values."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        out = []

        def add(key: str, value: float, step: int = 0) -> None:
            if value is not None and math.isfinite(value):
                out.append(Metric(key, float(value), now, int(step)))

        diverged = _diverged_step(result) is not None
        if result.steps is not None:
            clipping = result.config.clip != "none"
            steps = _before_divergence(result.steps, result)
            for series in STEP_SERIES:
                if series.key and (clipping or not series.clipped_only):
                    for step, value in zip(steps["step"], steps[series.column], strict=True):
                        for key in series.keys:
                            add(key, value, step)
            if result.sharpness is not None and len(result.sharpness):
                sharp = _before_divergence(result.sharpness, result)
                for series in SHARPNESS_SERIES:
                    for step, value in zip(sharp["step"], sharp[series.column], strict=True):
                        add(series.key, value, step)
            layers = _before_divergence(result.layers, result)
            depth = int(result.layers["layer"].max())
            records = np.sort(layers["step"].unique())
            if len(records):
                picks = np.linspace(0, len(records) - 1, LAYER_POINTS).round().astype(int)
                kept = layers[
                    layers["step"].isin(records[np.unique(picks)])
                    & layers["layer"].isin(charted_layers(depth))
                ]
                for series in LAYER_SERIES:
                    if series.key:
                        for step, layer, value in zip(kept["step"], kept["layer"],
                                                      kept[series.column], strict=True):  # fmt: skip
                            add(series.layer_key(int(layer), depth), value, step)
            profiles = depth_profiles(result)
            for profile in PROFILES:
                for when, layer, value in zip(profiles["when"], profiles["layer"],
                                              profiles[profile.column], strict=True):  # fmt: skip
                    add(profile.key(when), log10(value), layer)
        for scalar in SUMMARY:
            if scalar.name in result.summary:
                for key, value in scalar.mlflow(result.summary[scalar.name], diverged).items():
                    add(key, value)
        for name, value in result.timings.items():
            add(timing_key(name), value)
        return out

    def finish_parent(
        self, experiment_id: str, parent_id: str, table: pd.DataFrame,
        files: dict[str, bytes | str], status: str = "FINISHED",
    ) -> None:  # fmt: skip
        """summary.csv and the given files (name → PNG bytes or text) on the parent run, its
        note (``notes.parent_note``), the verdict counts, then its status."""
        from mlflow.entities import Metric, RunTag

        from bpdiag.sweep.notes import NOTE, parent_note

        def write() -> None:
            figures = [n for n, c in files.items() if isinstance(c, bytes)]
            paths = {r: ui_path(experiment_id, r) for r in table.get("run_id", [])}
            note = parent_note(table, paths, figures, parent_id)
            self.client.log_batch(parent_id, tags=[RunTag(NOTE, note)])
            with tempfile.TemporaryDirectory() as tmp:
                table.to_csv(Path(tmp) / "summary.csv", index=False)
                for name, content in files.items():
                    path = Path(tmp) / name
                    if isinstance(content, bytes):
                        path.write_bytes(content)
                    else:
                        path.write_text(content)
                self.client.log_artifacts(parent_id, tmp)
            now = int(time.time() * 1000)
            if "label" in table:
                counts = table["label"].value_counts()
                metrics = [
                    Metric(verdict_count_key(k), float(v), now, 0) for k, v in counts.items()
                ]
                self.client.log_batch(parent_id, metrics=metrics)
            self.client.set_terminated(parent_id, status)

        self._timed(write)

    def end_parent(self, parent_id: str, status: str) -> None:
        self.client.set_terminated(parent_id, status)

    # ------------------------------------------------------------ reading back

    def table(self, experiment_id: str, run_keys: set[str] | None = None) -> pd.DataFrame:
        """One row per FINISHED child: run_id, the RunConfig fields (typed), label, metrics."""
        rows = []
        for run in self.children(experiment_id, "FINISHED"):
            tags = run.data.tags
            if run_keys is not None and tags.get(Tag.RUN_KEY) not in run_keys:
                continue
            row = {
                "run_id": run.info.run_id,
                "run_key": tags.get(Tag.RUN_KEY),
                "label": tags.get(Tag.DIAGNOSIS),
                "name": run.info.run_name,
                "url": ui_url(experiment_id, run.info.run_id),
            }
            row.update(_config_of(run.data.params))
            for scalar in SUMMARY:
                value = scalar.from_mlflow(run.data.metrics)
                row[scalar.name] = math.nan if value is None else value
            rows.append((run.info.start_time, run.info.run_id, row))
        rows.sort(key=lambda t: t[:2])  # a run_key FINISHED twice (an older bpdiag's race):
        newest = {row["run_key"]: row for _, _, row in rows}  # the newest child counts, once
        return pd.DataFrame(list(newest.values()))

    def loss_history(self, run_id: str) -> pd.DataFrame:
        hist = self.client.get_metric_history(run_id, "loss")
        return pd.DataFrame(
            {"step": [m.step for m in hist], "loss": [m.value for m in hist]}
        ).sort_values("step")


def depth_profiles(result: RunResult) -> pd.DataFrame:
    """The layer series at the records of ``schema.PROFILE_AT`` (before a divergence): one row
    per (when, layer), with the record's step; a run's ``depth_profile.csv``, which MLflow's
    artifact view shows as a table (it has no preview of ``layers.parquet``)."""
    layers = _before_divergence(result.layers, result)
    records = np.sort(layers["step"].unique())
    if not len(records):
        return layers.assign(when=[]).iloc[:0]
    parts = [layers[layers["step"] == records[round(at * (len(records) - 1))]].assign(when=when)
             for when, at in PROFILE_AT]  # fmt: skip
    table = pd.concat(parts, ignore_index=True)
    return table[["when", "step", "layer", *(c for c in table.columns if c not in
                                             ("when", "step", "layer"))]]  # fmt: skip


def _config_of(params: dict[str, str]) -> dict[str, object]:
    """MLflow params are strings: the RunConfig they came from, typed (raw strings if not one)."""
    from pydantic import ValidationError

    from bpdiag.sweep.config import RunConfig

    try:
        return RunConfig(**{k: None if v == "None" else v for k, v in params.items()}).model_dump()
    except ValidationError:
        return dict(params)


def _diverged_step(result: RunResult) -> float | None:
    """The run's ``diverged_step``, or None where it did not diverge."""
    step = result.summary.get("diverged_step", -1.0)
    return step if step is not None and step >= 0 else None


def _before_divergence(records: pd.DataFrame, result: RunResult) -> pd.DataFrame:
    """The records (a ``steps`` or ``layers`` table) before the run diverged: after it the
    numbers overflowed (1e266, ±inf) and would read as values."""
    step = _diverged_step(result)
    return records if step is None else records[records["step"] < step]


def _json_numbers(values: dict[str, float]) -> dict[str, float | str | None]:
    """Numbers JSON can hold: NaN becomes null, ±inf the strings "inf" / "-inf"."""
    out: dict[str, float | str | None] = {}
    for key, value in values.items():
        value = float(value)
        out[key] = value if math.isfinite(value) else None if math.isnan(value) else str(value)
    return out


def _dataset_input(cfg):
    """The run's data set as MLflow's input (the runs table's Dataset column and filter): the
    name, a digest of what fixes its rows (name, size, seed), where it comes from."""
    import hashlib

    from mlflow.entities import Dataset, DatasetInput, InputTag

    what = {"name": cfg.dataset, "n_samples": cfg.n_samples, "seed": cfg.seed}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
    source = json.dumps({"bpdiag.data.load": what})
    dataset = Dataset(name=cfg.dataset, digest=digest, source_type="code", source=source,
                      profile=json.dumps({"n_samples": cfg.n_samples}))  # fmt: skip
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])


def _float(text: str | None, default: float) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _create_sqlite_store(path: Path) -> None:
    """A new, fully migrated MLflow database at ``path``, made as ``.NAME.PID.creating``
    beside it and renamed into place; what a killed creator left is removed first (the
    caller holds the store's lock, so no creator is alive)."""
    from mlflow import MlflowClient

    for stale in path.parent.glob(f".{path.name}.*.creating*"):
        stale.unlink(missing_ok=True)
    making = path.with_name(f".{path.name}.{os.getpid()}.creating")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{making}").search_experiments(max_results=1)
        os.replace(making, path)
    except BaseException:  # an interrupt, or a failure to report
        making.unlink(missing_ok=True)
        raise


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for an in-memory one)."""
    from urllib.parse import unquote, urlparse

    path = unquote(urlparse(uri).path)  # "/rel.db" for sqlite:///rel.db, "//abs.db" for ////
    if not path or ":memory:" in path:
        return None
    return Path(path[1:]).absolute()


def _local_path(location: str | None) -> Path | None:
    if not location:
        return None
    if location.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(location).path))
    return Path(location) if "://" not in location else None


def _last_line(err: BaseException) -> str:
    """The cause at the bottom of a chained error, on one line."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _probe_http(uri: str, timeout: float) -> None:
    """One request to the server's REST API, within ``timeout`` seconds."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(1)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise StoreError(f"store {uri}: the server refused access (HTTP {err.code})") from None
        if err.code >= 500 or err.code == 404:
            raise StoreError(f"store {uri}: the server answered HTTP {err.code} "
                             f"({err.reason}); is it an MLflow server?") from None  # fmt: skip
    except TimeoutError:
        raise StoreError(f"store {uri}: no answer within {timeout:g} s") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, TimeoutError):
            raise StoreError(f"store {uri}: no answer within {timeout:g} s") from None
        raise StoreError(f"store {uri}: cannot connect ({reason})") from None
    except OSError as err:
        raise StoreError(f"store {uri}: cannot connect ({err})") from None


def _within(timeout: float, uri: str, call) -> None:
    """``call()`` in a daemon thread; a ``StoreError`` if it fails or takes over ``timeout``."""
    import threading

    box: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            box.append(None)
        except BaseException as err:  # noqa: BLE001  (reported below)
            box.append(err)

    thread = threading.Thread(target=run, name="bpdiag-store-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        raise StoreError(f"store {uri}: no answer within {timeout:g} s")
    if box[0] is not None:
        raise StoreError(f"store {uri}: {_last_line(box[0])}")
