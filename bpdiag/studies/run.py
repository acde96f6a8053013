"""A study end to end: its sweep files (full size, or a tiny smoke version), then its report.

A study ``NAME`` is a module ``bpdiag.studies.NAME`` with ``TITLE``, ``INTRO`` (the question
and the paper), ``SPECS`` (sweep files in ``experiments/NAME/``) and ``build(data, report)``,
which reads the runs back (``StudyData``) and adds checks, figures and tables to the report.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
from pathlib import Path
from types import ModuleType

import yaml

from bpdiag.studies.report import Report, fmt
from bpdiag.studies.store import SECONDS_TAG, WHEN_TAG, StudyData
from bpdiag.sweep.config import load_spec, read_spec
from bpdiag.sweep.tracking import Tracker

STUDIES = ("glorot2010", "he2015", "edge_of_chaos", "normalization", "clipping", "optimizers")
TINY = {"steps": 24, "record_every": 4, "width": 12, "n_samples": 96, "batch_size": 32}
TINY_DEPTH = 6  # a tiny study's deepest net


def study(name: str) -> ModuleType:
    """The module of study ``name``."""
    if name not in STUDIES:
        raise ValueError(f"study: unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    module = f"bpdiag.studies.{name}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:  # the study exists but something it imports does not
            raise
        raise ValueError(f"study: {name!r} is not written yet (see the open issues)") from None


def available() -> list[str]:
    """The studies that are written."""
    out = []
    for name in STUDIES:
        try:
            study(name)
        except ValueError:
            continue
        out.append(name)
    return out


def spec_files(name: str, folder: Path, tiny: bool = False, scratch: Path | None = None
               ) -> list[Path]:  # fmt: skip
    """The sweep files of study ``name`` in ``folder`` (``experiments/NAME``); ``tiny``: shrunk
    copies written to ``scratch`` (``shrink``), in experiments of their own."""
    paths = [folder / spec for spec in study(name).SPECS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"study {name}: no sweep file {', '.join(missing)} (run from the bpdiag "
                         "checkout, or give the folder of the experiments)")  # fmt: skip
    if not tiny:
        return paths
    if scratch is None:
        raise ValueError("study: a tiny study needs a scratch folder for its sweep files")
    scratch.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        small = scratch / path.name
        small.write_text(yaml.safe_dump(shrink(read_spec(path)), sort_keys=False), "utf-8")
        out.append(small)
    return out


def shrink(data: dict) -> dict:
    """A sweep file's smoke version: one seed, tiny nets and few steps, depths capped at
    ``TINY_DEPTH``, in an experiment ``…-tiny`` (never mixed with the real study's runs)."""
    data = dict(data)
    data["experiment"] = f"{data.get('experiment') or 'bpdiag-' + data['name']}-tiny"
    data["name"] = f"{data['name']}-tiny"
    data["seeds"] = list(data.get("seeds", [0]))[:1]
    base = dict(data.get("base", {}))
    base.update({k: min(v, base.get(k, v)) for k, v in TINY.items()})
    if "depth" in base:
        base["depth"] = min(base["depth"], TINY_DEPTH)
    data["base"] = base
    grids = data.get("parameters", {})
    data["parameters"] = [_shrink_grid(g) for g in grids] if isinstance(grids, list) else (
        _shrink_grid(grids))  # fmt: skip
    return data


def _shrink_grid(grid: dict) -> dict:
    out = {}
    for key, axis in grid.items():
        axis = dict(axis)
        if key in TINY or key == "depth":
            cap = TINY_DEPTH if key == "depth" else TINY[key]
            if "values" in axis:
                axis["values"] = sorted({min(v, cap) for v in axis["values"]})
        out[key] = axis
    return out


def record_time(spec_paths: list[Path], seconds: float, tracking_uri: str | None = None) -> None:
    """Note on the study's experiments how long its last run end to end took."""
    tracker = Tracker(tracking_uri)
    when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores"
    for path in spec_paths:
        spec, _ = load_spec(path)
        exp = tracker.experiment_id(spec.experiment_name)
        tracker.client.set_experiment_tag(exp, SECONDS_TAG, f"{seconds:.1f}")
        tracker.client.set_experiment_tag(exp, WHEN_TAG, when)


def render(name: str, spec_paths: list[Path], out: Path, tracking_uri: str | None = None) -> Path:
    """Write ``out/report.md`` and its figures from the store; returns the report's path."""
    module = study(name)
    specs = {Path(p).stem: load_spec(p) for p in spec_paths}
    data = StudyData(Tracker(tracking_uri), specs)
    report = Report(module.TITLE)
    try:
        summary = module.build(data, report)
        seconds, when = data.seconds(), data.when()
    finally:
        data.close()
    n_runs = sum(len(runs) for _, runs in specs.values())
    took = (f"{fmt(seconds / 60, 2)} minutes ({when})" if seconds
            else "an unrecorded time (the runs were resumed or made elsewhere)")  # fmt: skip
    report.text(f"""## How this was run

{n_runs} runs from {", ".join(f"`{Path(p).name}`" for p in spec_paths)}, logged to MLflow
(`{data.tracker.uri}`, experiment{"s" if len(specs) > 1 else ""}
{", ".join(f"`{s.experiment_name}`" for s, _ in specs.values())}); training and logging
took {took}; the report renders from the store in seconds.

```sh
bpdiag experiment {name}                 # train what is not in the store yet, then this report
bpdiag experiment {name} --report-only   # this report again, from the store
```""")
    path = report.write(out, module.INTRO)
    gallery = {"name": name, "title": module.TITLE, "summary": summary,
               "figure": next(iter(report.figures), ""), "seconds": seconds,
               "agree": sum(c.agrees is True for c in report.checks),
               "checks": len(report.checks)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(gallery, indent=1), "utf-8")
    return path


def write_gallery(root: Path) -> Path:
    """``root/README.md``: one figure and two sentences per study that has a report."""
    lines = ["# Experiments", "",
             "The classic results on vanishing and exploding gradients, re-measured by bpdiag. "
             "Each folder holds its sweep files, a `report.md` generated from the MLflow store "
             "and its figures; `bpdiag experiment NAME` (or `make experiment NAME=…`) runs one "
             "end to end, `--report-only` redraws it from the store, `--tiny` runs a smoke "
             "version. A study is this folder plus a module `bpdiag/studies/NAME.py` (`TITLE`, "
             "`INTRO`, `SPECS` and `build`, which reads the runs back and writes the checks, "
             "figures and tables). Each time is that of the run that made the report.", ""]  # fmt: skip
    for name in STUDIES:
        path = root / name / "summary.json"
        if not path.is_file():
            lines += [f"## {name}", "", "Not written yet.", ""]
            continue
        info = json.loads(path.read_text("utf-8"))
        facts = [f"{fmt(info['seconds'] / 60, 2)} min"] if info.get("seconds") else []
        if info.get("checks"):
            facts.append(f"{info['agree']} of {info['checks']} headline checks agree")
        lines += [f"## [{info['title']}]({name}/report.md)", ""]
        if facts:
            lines += [f"*{' · '.join(facts)}*", ""]
        if info.get("figure"):
            lines += [f"[![{name}]({name}/{info['figure']})]({name}/report.md)", ""]
        lines += [info["summary"], ""]
    out = root / "README.md"
    out.write_text("\n".join(lines), "utf-8")
    return out
