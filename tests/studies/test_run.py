"""Every written study runs end to end at a tiny size, logs to MLflow and renders its report
from the store alone (``--report-only`` gives the same report); bad names fail clearly."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed import LocalCluster

from bpdiag.cli import main
from bpdiag.studies import run as studies

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="module")
def scheduler():
    """One worker for every study of this module (each sweep would start a cluster of its own)."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:  # fmt: skip
        yield cluster.scheduler_address


def _experiment(*args: str):
    return CliRunner().invoke(main, ["experiment", *args, "--dir", str(EXPERIMENTS)])


@pytest.mark.parametrize("name", studies.available())
def test_a_tiny_study_trains_logs_and_reports_from_the_store(name, scheduler, tmp_path):
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--tiny", "--out", str(out), "--tracking-uri", uri]
    result = _experiment(name, *common, "--scheduler", scheduler)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text("utf-8")
    assert report.startswith("# ") and "## Headline" in report and "## How this was run" in report
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert figures and all((out / f).stat().st_size > 10_000 for f in figures)
    assert "minutes (" in report  # the time it took, recorded in the store
    assert json.loads((out / "summary.json").read_text("utf-8"))["summary"]
    (out / "report.md").unlink()
    again = _experiment(name, *common, "--report-only")  # no scheduler: nothing trains
    assert again.exit_code == 0, again.output
    assert (out / "report.md").read_text("utf-8") == report


def test_a_tiny_spec_is_small_and_in_an_experiment_of_its_own():
    spec = {"name": "s", "seeds": [3, 4], "base": {"width": 1000, "steps": 3000, "depth": 30},
            "parameters": [{"depth": {"values": [5, 50, 100]}, "lr": {"values": [0.1]}}]}  # fmt: skip
    tiny = studies.shrink(spec)
    assert tiny["name"] == "s-tiny" and tiny["experiment"] == "bpdiag-s-tiny"
    assert tiny["seeds"] == [3]
    assert tiny["base"]["width"] == studies.TINY["width"] and tiny["base"]["depth"] == 6
    assert tiny["parameters"][0] == {"depth": {"values": [5, 6]}, "lr": {"values": [0.1]}}
    assert spec["base"]["width"] == 1000  # the spec itself is left alone


def test_an_unknown_study_or_a_missing_folder_exits_2_naming_it(tmp_path):
    result = _experiment("hinton2006")
    assert result.exit_code == 2 and "unknown study 'hinton2006'" in result.output
    assert "he2015" in result.output
    result = CliRunner().invoke(main, ["experiment", "he2015", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "no sweep file" in " ".join(result.output.split())


def test_report_only_without_runs_says_to_run_the_study_first(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _experiment("he2015", "--report-only", "--out", str(tmp_path), "--tracking-uri", uri)
    assert result.exit_code == 1
    assert "run the study without --report-only first" in " ".join(result.output.split())
