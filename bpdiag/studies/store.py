"""What a study's report reads back from MLflow: its runs, their per-layer profiles and series.

A report is rendered from the store alone, so ``bpdiag experiment NAME --report-only`` draws
the same figures on any machine that holds the runs.
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bpdiag.sweep.config import SweepSpec
from bpdiag.sweep.tracking import Tracker

SECONDS_TAG = "bpdiag.study.seconds"  # on the experiment: the last end-to-end run's wall time
WHEN_TAG = "bpdiag.study.when"  # and when it ended, on how many cores


@dataclass(eq=False)  # hashed by identity: its readers are cached per instance
class StudyData:
    """A study's runs in one store: ``spec`` → its FINISHED children, and their artifacts."""

    tracker: Tracker
    specs: dict[str, tuple[SweepSpec, list]]  # spec name → (spec, its RunConfigs)
    cache: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bpdiag-study-")))

    def table(self, spec: str) -> pd.DataFrame:
        """One row per run of ``spec`` that finished (``Tracker.table``: config, label, summary)."""
        parsed, runs = self.specs[spec]
        exp = self.tracker.experiment_id(parsed.experiment_name, create=False)
        if exp is None:
            raise ValueError(f"study: no experiment {parsed.experiment_name!r} in "
                             f"{self.tracker.uri}; run the study without --report-only first")  # fmt: skip
        table = self.tracker.table(exp, {r.run_key for r in runs})
        if table.empty:
            raise ValueError(f"study: no finished run of {spec!r} in {self.tracker.uri}")
        return table

    @functools.cache  # noqa: B019 (one StudyData per report)
    def profile(self, run_id: str) -> pd.DataFrame:
        """The run's ``depth_profile.csv``: each layer at init, ¼, ½ and the end of training."""
        return pd.read_csv(self._download(run_id, "depth_profile.csv"))

    @functools.cache  # noqa: B019
    def layers(self, run_id: str) -> pd.DataFrame:
        """Every record of every layer (``layers.parquet``)."""
        return pd.read_parquet(self._download(run_id, "layers.parquet"))

    def series(self, run_id: str, key: str = "loss") -> pd.DataFrame:
        """A metric's history: (step, value)."""
        hist = self.tracker.client.get_metric_history(run_id, key)
        return pd.DataFrame({"step": [m.step for m in hist], "value": [m.value for m in hist]}
                            ).sort_values("step", ignore_index=True)  # fmt: skip

    def seconds(self) -> float | None:
        """Wall time of the study's last run end to end (None if never recorded)."""
        tags = self._experiment_tags()
        return float(tags[SECONDS_TAG]) if SECONDS_TAG in tags else None

    def when(self) -> str:
        return self._experiment_tags().get(WHEN_TAG, "")

    def _experiment_tags(self) -> dict[str, str]:
        parsed, _ = next(iter(self.specs.values()))
        exp = self.tracker.client.get_experiment_by_name(parsed.experiment_name)
        return dict(exp.tags) if exp is not None else {}

    def close(self) -> None:
        """Remove the downloaded artifacts."""
        shutil.rmtree(self.cache, ignore_errors=True)

    def _download(self, run_id: str, path: str) -> Path:
        folder = self.cache / run_id
        folder.mkdir(parents=True, exist_ok=True)
        return Path(self.tracker.client.download_artifacts(run_id, path, str(folder)))


def at(profile: pd.DataFrame, when: str) -> pd.DataFrame:
    """One checkpoint of a ``depth_profile.csv`` (``0_init``, ``1_quarter``, ``2_half``,
    ``3_end``), indexed by layer."""
    return profile[profile["when"] == when].set_index("layer").sort_index()


def first_step_below(series: pd.DataFrame, level: float, column: str = "value") -> float:
    """The first step whose ``column`` is below ``level`` (NaN: never)."""
    hit = series.loc[series[column] < level, "step"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def layer_shapes(config: pd.Series) -> dict[int, tuple[int, int]]:
    """Layer → (fan_in, fan_out) of the weight matrix, for a run's config (a ``table`` row)."""
    from bpdiag import data

    ds = data.load(config["dataset"], n_samples=int(config["n_samples"]), seed=0)
    sizes = [ds.n_features] + [int(config["width"])] * (int(config["depth"]) - 1) + [ds.n_outputs]
    return {layer: (sizes[layer - 1], sizes[layer]) for layer in range(1, len(sizes))}


def per_weight(norms: pd.Series, shapes: dict[int, tuple[int, int]]) -> pd.Series:
    """A Frobenius norm per layer (indexed by layer) as an RMS per weight: ‖·‖/√(n_in·n_out)."""
    size = pd.Series({layer: math.sqrt(i * o) for layer, (i, o) in shapes.items()})
    return norms / size.reindex(norms.index)


def input_second_moment(config: pd.Series) -> float:
    """E[x²] of a run's training inputs (mean-field theory's q0)."""
    from bpdiag import data

    ds = data.load(config["dataset"], n_samples=int(config["n_samples"]), seed=0)
    return float((ds.X_train**2).mean())


def geomean(values: pd.Series) -> float:
    """The geometric mean of the positive values (NaN if there are none)."""
    values = values[values > 0]
    return float(np.exp(np.log(values).mean())) if len(values) else math.nan
