"""The one writer to MLflow: a parent run per sweep invocation, a nested child per RunConfig.

Schema (the contract in DESIGN.md):
- params: every RunConfig field by name; tags ``bpdiag.diagnosis``, ``bpdiag.run_key``,
  ``bpdiag.sweep``, ``bpdiag.version``, ``bpdiag.reason``, ``mlflow.parentRunId``.
- step metrics at the record cadence: ``loss``, ``accuracy``, ``grad_norm/total``,
  ``grad_norm/total_clipped``, ``clip_coef``; per layer, downsampled to ``LAYER_POINTS`` records:
  ``grad_norm/layer_01``…, ``delta_rms/layer_01``…, ``update_ratio/layer_01``….
- summary metrics: ``RunResult.summary`` and the diagnosis evidence (``final_loss``,
  ``test_accuracy``, ``grad_ratio_first_last``, ``decay_per_layer``, ``chi1_theory``, ...).
- artifacts: ``gradient_flow.png``, ``grad_norm_vs_depth.png``, ``layers.parquet`` (full
  resolution), ``config.yaml``, ``diagnosis.json``.

A child is marked FINISHED only after everything above is written, so a FINISHED child is
complete; resume skips exactly those run_keys.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bpdiag.config import RUN_FIELDS
from bpdiag.run import RunResult

DEFAULT_URI = "sqlite:///mlflow.db"
LAYER_POINTS = 12  # records kept per per-layer series in MLflow (all of them in layers.parquet)
STEP_SERIES = {  # MLflow key ← History.steps column
    "loss": "loss",
    "accuracy": "accuracy",
    "grad_norm/total": "grad_norm_total",
    "grad_norm/total_clipped": "grad_norm_total_clipped",
    "clip_coef": "clip_coef",
}
UNCLIPPED_SERIES = {k: v for k, v in STEP_SERIES.items() if "clip" not in k}  # no copies of 1, ‖g‖
LAYER_SERIES = {
    "grad_norm": "grad_norm_W",
    "delta_rms": "delta_rms",
    "update_ratio": "update_ratio",
}
TAG_RUN_KEY, TAG_SWEEP, TAG_DIAGNOSIS = "bpdiag.run_key", "bpdiag.sweep", "bpdiag.diagnosis"
TAG_REASON, TAG_VERSION, TAG_PARENT = "bpdiag.reason", "bpdiag.version", "mlflow.parentRunId"
TAG_ROLE = "bpdiag.role"  # "sweep" (parent) or "run" (child)


def tracking_uri(uri: str | None = None) -> str:
    """The store: ``uri``, else $MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def layer_key(series: str, layer: int, depth: int) -> str:
    """'grad_norm/layer_07': zero-padded so the keys sort by layer in the UI."""
    return f"{series}/layer_{layer:0{max(2, len(str(depth)))}d}"


def ui_url(experiment_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The runs table of an experiment (MLflow 3 opens its GenAI view otherwise)."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}?workflowType=machine_learning"


def _version() -> str:
    from bpdiag import __version__

    return __version__


def _finite_or_skip(value: float) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


class Tracker:
    """MLflow access for sweeps. Only the driver holds one."""

    def __init__(self, uri: str | None = None) -> None:
        import logging

        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.log_seconds = 0.0  # time spent writing, for --timings

    # ------------------------------------------------------------ reading

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        return (
            self.client.create_experiment(name, tags={TAG_VERSION: _version()}) if create else None
        )

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
        filt = f"tags.`{TAG_ROLE}` = 'run'"
        if status:
            filt += f" and attributes.status = '{status}'"
        return self.runs(experiment_id, filt)

    def finished_keys(self, experiment_id: str) -> dict[str, str]:
        """run_key → run_id of every FINISHED child."""
        return {
            r.data.tags[TAG_RUN_KEY]: r.info.run_id
            for r in self.children(experiment_id, "FINISHED")
        }

    # ------------------------------------------------------------ writing

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.log_seconds += time.perf_counter() - start

    def mark_stale(self, experiment_id: str, run_keys: set[str]) -> int:
        """Children of these run_keys left RUNNING by a killed sweep become KILLED."""
        stale = [
            r
            for r in self.children(experiment_id, "RUNNING")
            if r.data.tags.get(TAG_RUN_KEY) in run_keys
        ]
        for r in stale:
            self.client.set_terminated(r.info.run_id, "KILLED")
        return len(stale)

    def start_parent(
        self, experiment_id: str, spec, spec_text: str, n_runs: int, n_skipped: int
    ) -> str:
        from mlflow.entities import Param

        tags = {TAG_SWEEP: spec.name, TAG_VERSION: _version(), TAG_ROLE: "sweep"}
        run = self.client.create_run(experiment_id, tags=tags,
                                     run_name=f"sweep {spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}")  # fmt: skip
        params = {"sweep": spec.name, "method": spec.method, "runs": n_runs, "skipped": n_skipped,
                  "seeds": ",".join(map(str, spec.seeds)), "description": spec.description[:500]}  # fmt: skip
        self._timed(self.client.log_batch, run.info.run_id,
                    params=[Param(k, str(v)) for k, v in params.items()])  # fmt: skip
        self._timed(self.client.log_text, run.info.run_id, spec_text, "sweep.yaml")
        return run.info.run_id

    def log_child(self, experiment_id: str, parent_id: str, sweep: str, result: RunResult) -> str:
        """Write one run's params, tags, metrics and artifacts; then mark it FINISHED/FAILED."""
        return self._timed(self._log_child, experiment_id, parent_id, sweep, result)

    def _log_child(self, experiment_id: str, parent_id: str, sweep: str, result: RunResult) -> str:
        from mlflow.entities import Param, RunTag

        cfg = result.config
        tags = {TAG_PARENT: parent_id, TAG_RUN_KEY: cfg.run_key, TAG_SWEEP: sweep, TAG_ROLE: "run",
                TAG_VERSION: _version(), "bpdiag.worker": result.worker}  # fmt: skip
        if result.label:
            tags[TAG_DIAGNOSIS] = result.label
            tags[TAG_REASON] = result.reason[:5000]
        run_id = self.client.create_run(experiment_id, tags=tags, run_name=cfg.name).info.run_id
        params = [Param(k, str(getattr(cfg, k))) for k in RUN_FIELDS]
        metrics = self.metrics(result)
        for i in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(
                run_id, metrics=metrics[i : i + 1000], params=params if i == 0 else ()
            )
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
            if result.status == "FINISHED":
                for name, png in result.figures.items():
                    (folder / name).write_bytes(png)
                result.layers.to_parquet(folder / "layers.parquet", index=False)
                diagnosis = {
                    "label": result.label,
                    "reason": result.reason,
                    "evidence": result.evidence,
                }
                (folder / "diagnosis.json").write_text(
                    json.dumps(diagnosis, indent=2, default=float)
                )
            else:
                (folder / "error.txt").write_text(result.error or "")
                self.client.log_batch(
                    run_id, tags=[RunTag("bpdiag.error", (result.error or "")[-4000:])]
                )
            self.client.log_artifacts(run_id, tmp)
        self.client.set_terminated(run_id, result.status)
        return run_id

    @staticmethod
    def metrics(result: RunResult) -> list:
        """Step series (at the record cadence), per-layer series (downsampled), summary."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        out = []
        if result.steps is not None:
            steps = result.steps
            series = STEP_SERIES if result.config.clip != "none" else UNCLIPPED_SERIES
            for key, column in series.items():
                for step, value in zip(steps["step"], steps[column], strict=True):
                    if _finite_or_skip(value):
                        out.append(Metric(key, float(value), now, int(step)))
            layers = result.layers
            records = np.sort(layers["step"].unique())
            keep = records[
                np.unique(np.linspace(0, len(records) - 1, LAYER_POINTS).round().astype(int))
            ]
            kept = layers[layers["step"].isin(keep)]
            depth = int(layers["layer"].max())
            for series, column in LAYER_SERIES.items():
                for step, layer, value in zip(
                    kept["step"], kept["layer"], kept[column], strict=True
                ):
                    if _finite_or_skip(value):
                        out.append(
                            Metric(
                                layer_key(series, int(layer), depth), float(value), now, int(step)
                            )
                        )
        summary = {
            **{k: v for k, v in result.evidence.items() if isinstance(v, int | float)},
            **result.summary,
        }
        for key, value in summary.items():
            if _finite_or_skip(value):
                out.append(Metric(key, float(value), now, 0))
        for key, value in result.timings.items():
            out.append(Metric(f"time/{key}", float(value), now, 0))
        return out

    def finish_parent(
        self, parent_id: str, table: pd.DataFrame, figures: dict, status: str = "FINISHED"
    ) -> None:
        """summary.csv and the comparison figures (name → function making a Figure) on the
        parent run, then its status. A figure that fails becomes a ``<name>.error.txt``."""
        import traceback

        from mlflow.entities import Metric

        def write() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                table.to_csv(Path(tmp) / "summary.csv", index=False)
                for name, make in figures.items():
                    try:
                        make().savefig(Path(tmp) / name, dpi=110)
                    except Exception:
                        (Path(tmp) / f"{name}.error.txt").write_text(traceback.format_exc())
                self.client.log_artifacts(parent_id, tmp)
            now = int(time.time() * 1000)
            if "label" in table:
                counts = table["label"].value_counts()
                self.client.log_batch(
                    parent_id,
                    metrics=[Metric(f"runs/{k}", float(v), now, 0) for k, v in counts.items()],
                )
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
            if run_keys is not None and tags.get(TAG_RUN_KEY) not in run_keys:
                continue
            row = {
                "run_id": run.info.run_id,
                "run_key": tags.get(TAG_RUN_KEY),
                "label": tags.get(TAG_DIAGNOSIS),
            }
            row.update(_config_of(run.data.params))
            row.update({k: v for k, v in run.data.metrics.items() if "/" not in k})
            rows.append(row)
        return pd.DataFrame(rows)

    def loss_history(self, run_id: str) -> pd.DataFrame:
        hist = self.client.get_metric_history(run_id, "loss")
        return pd.DataFrame(
            {"step": [m.step for m in hist], "loss": [m.value for m in hist]}
        ).sort_values("step")


def _config_of(params: dict[str, str]) -> dict[str, object]:
    """MLflow params are strings: the RunConfig they came from, typed (raw strings if not one)."""
    from pydantic import ValidationError

    from bpdiag.config import RunConfig

    try:
        return RunConfig(**{k: None if v == "None" else v for k, v in params.items()}).model_dump()
    except ValidationError:
        return dict(params)
