"""Sweeps end to end with real parts: a Dask LocalCluster of 2 workers, a SQLite MLflow store in a
temp dir, a real `mlflow server` on 127.0.0.1, and a real SIGKILL mid-sweep."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from processes import free_port

from bpdiag.cli import main
from bpdiag.schema import Tag
from bpdiag.sweep import run_sweep
from bpdiag.sweep.config import RUN_FIELDS, load_spec
from bpdiag.sweep.tracking import Tracker

SPEC = """
name: tiny
experiment: bpdiag-tiny
seeds: [0, 1]
base: {dataset: spirals, n_samples: 200, width: 8, steps: 40, record_every: 5}
parameters:
  - depth: {values: [3, 6]}
    activation: {values: [sigmoid, relu]}
  - depth: {values: [4]}
    optimizer: {values: [sgd, adam]}
    clip: {values: [none, norm]}
    clip_value: {values: [1.0]}
"""
N_RUNS = 16


def _text(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    spec = folder / "tiny.yaml"
    spec.write_text(SPEC)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    seen = []
    outcome = run_sweep(spec, tracking_uri=uri, workers=2, on_result=seen.append)
    return spec, uri, outcome, seen


def test_every_run_finished_on_two_workers(swept):
    _, uri, outcome, seen = swept
    assert outcome.finished == N_RUNS and outcome.failed == 0 and outcome.skipped == 0
    assert len(seen) == N_RUNS and outcome.timings["workers"] == 2
    assert len({r.worker for r in seen}) == 2  # both worker processes trained
    assert outcome.url.endswith(
        f"#/experiments/{outcome.experiment_id}?workflowType=machine_learning"
    )


def test_store_holds_children_with_the_schema(swept):
    spec, uri, outcome, _ = swept
    tracker = Tracker(uri)
    children = tracker.children(outcome.experiment_id, "FINISHED")
    assert len(children) == N_RUNS
    keys = {cfg.run_key for cfg in load_spec(spec)[1]}
    assert {c.data.tags[Tag.RUN_KEY] for c in children} == keys
    for child in children:
        tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
        assert tags[Tag.PARENT] == outcome.parent_run_id and tags[Tag.SWEEP] == "tiny"
        assert tags[Tag.DIAGNOSIS] in {
            "healthy",
            "vanishing",
            "exploding",
            "diverged",
            "dead",
            "saturated",
        }
        assert tags[Tag.BLAS].split()[0] in ("mkl", "openblas")  # the GEMM library that ran
        assert set(params) == set(RUN_FIELDS)
        depth = int(params["depth"])
        for key in ("loss", "accuracy", "batch/grad_norm", "summary/outcome/final_loss",
                    "summary/outcome/test_accuracy", "summary/flow/grad_ratio_first_last",
                    "summary/flow/log10_grad_ratio_first_last", "summary/flow/decay_per_layer",
                    "summary/theory/chi1_theory", "summary/verdict/log10_delta_ratio_median",
                    "depth/log10_delta/0_init", "depth/log10_grad/3_end", "batch/loss",
                    f"layer/grad_norm/{depth:02d}", "layer/delta_rms/01", "layer/update_ratio/01"):  # fmt: skip
            assert key in metrics, key
        assert len(metrics) < 300  # the UI slows down past the low hundreds
        artifacts = {a.path for a in tracker.client.list_artifacts(child.info.run_id)}
        assert {"gradient_flow.png", "grad_norm_vs_depth.png", "layers.parquet", "config.yaml",
                "diagnosis.json", "depth_profile.csv"} <= artifacts  # fmt: skip


def test_step_series_and_full_resolution_parquet(swept):
    _, uri, outcome, _ = swept
    tracker = Tracker(uri)
    child = tracker.children(outcome.experiment_id, "FINISHED")[0]
    history = tracker.client.get_metric_history(child.info.run_id, "loss")
    assert [m.step for m in history] == list(range(0, 40, 5)) + [39]
    path = tracker.client.download_artifacts(child.info.run_id, "layers.parquet")
    layers = pd.read_parquet(path)
    depth = int(child.data.params["depth"])
    assert len(layers) == 9 * depth and set(layers["layer"]) == set(range(1, depth + 1))
    per_layer = tracker.client.get_metric_history(child.info.run_id, "layer/delta_rms/01")
    assert [m.value for m in per_layer] == pytest.approx(
        list(layers[layers.layer == 1]["delta_rms"])
    )
    # the profiles at init, ¼, ½, the end: a CSV that MLflow previews as a table
    path = tracker.client.download_artifacts(child.info.run_id, "depth_profile.csv")
    profile = pd.read_csv(path)
    assert list(profile["when"].unique()) == ["0_init", "1_quarter", "2_half", "3_end"]
    assert len(profile) == 4 * depth and list(profile.columns[:3]) == ["when", "step", "layer"]
    end = profile[profile["when"] == "3_end"]
    assert list(end["step"].unique()) == [39]
    assert end["delta_rms"].tolist() == pytest.approx(
        layers[layers.step == 39]["delta_rms"].tolist(), rel=1e-5
    )


def test_parent_has_summary_and_comparison_figures(swept):
    _, uri, outcome, _ = swept
    tracker = Tracker(uri)
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in tracker.client.list_artifacts(outcome.parent_run_id)}
    assert {"summary.csv", "verdict_grid.png", "loss_curves.png", "sweep.yaml"} <= artifacts
    summary = pd.read_csv(tracker.client.download_artifacts(outcome.parent_run_id, "summary.csv"))
    assert len(summary) == N_RUNS and {"label", "depth", "final_loss", "run_key"} <= set(
        summary.columns
    )


def test_resume_skips_finished_runs(swept):
    spec, uri, outcome, _ = swept
    again = run_sweep(spec, tracking_uri=uri, workers=2)
    assert again.skipped == N_RUNS and again.finished == 0
    assert again.parent_run_id != outcome.parent_run_id
    assert len(Tracker(uri).children(outcome.experiment_id, "FINISHED")) == N_RUNS
    assert len(again.table) == N_RUNS  # the new parent's summary still covers every run


def test_compare_through_the_cli(swept, tmp_path):
    import json
    from urllib.parse import unquote

    _, uri, outcome, _ = swept
    plot = tmp_path / "cmp.png"
    result = CliRunner().invoke(main, ["compare", "bpdiag-tiny", "--tracking-uri", uri, "--by",
                                       "optimizer,clip", "--plot", str(plot)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "final_loss by optimizer, clip" in _text(result) and "adam" in result.output
    assert "8 others left out" in _text(result)  # the depth × activation runs differ in more
    compared = [
        r.info.run_id
        for r in Tracker(uri).children(outcome.experiment_id, "FINISHED")
        if r.data.params["depth"] == "4"
    ]  # the 8 compared runs, side by side
    page = next(w for w in result.output.split() if "#/compare-runs?" in w)
    assert page.endswith("&workflowType=machine_learning")
    assert sorted(json.loads(unquote(page.split("runs=")[1].split("&")[0]))) == sorted(compared)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    result = CliRunner().invoke(main, ["compare", "bpdiag-tiny", "--tracking-uri", uri, "--by",
                                       "depth", "--metric", "grad_ratio_first_last", "--all"])  # fmt: skip
    assert result.exit_code == 0 and "grad_ratio_first_last by depth" in _text(result)
    bad = CliRunner().invoke(main, ["compare", "nope", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "no experiment 'nope'" in _text(bad)
    bad = CliRunner().invoke(
        main, ["compare", "bpdiag-tiny", "--tracking-uri", uri, "--metric", "x"]
    )
    assert bad.exit_code == 2 and "unknown column(s) ['x']" in _text(bad)


def test_diagnose_through_the_cli(swept):
    _, uri, outcome, _ = swept
    child = Tracker(uri).children(outcome.experiment_id, "FINISHED")[0]
    result = CliRunner().invoke(main, ["diagnose", child.info.run_id, "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"verdict: {child.data.tags[Tag.DIAGNOSIS]}" in _text(result)
    assert "grad_ratio_first_last_theory" in result.output
    assert f"timeline: {child.data.tags[Tag.HEADLINE]}" in _text(result)
    assert "steps 0–" in _text(result)  # each phase with its steps and median ratio
    bad = CliRunner().invoke(main, ["diagnose", "0123456789abcdef", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "no run" in _text(bad)


def test_rerun_keeps_one_finished_child_per_run_key(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text("name: two\nbase: {n_samples: 100, width: 4, depth: 2, steps: 5}\n"
                    "parameters:\n  activation: {values: [tanh, relu]}\n")  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    first = run_sweep(spec, tracking_uri=uri, workers=1)
    second = run_sweep(spec, tracking_uri=uri, workers=1, rerun=True)
    assert second.finished == 2
    children = Tracker(uri).children(first.experiment_id, "FINISHED")
    assert len(children) == 2 and all(
        c.data.tags[Tag.PARENT] == second.parent_run_id for c in children
    )


# ---------------------------------------------------------------- a real HTTP tracking server


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("mlflow server did not start within 60 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow  # separate processes for tens of seconds
def test_sweep_against_a_real_mlflow_server(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    spec = tmp_path / "http.yaml"
    spec.write_text("name: http\nseeds: [0, 1]\nbase: {n_samples: 100, width: 6, depth: 3, steps: 10}\n"
                    "parameters:\n  init: {values: [xavier_normal, he_normal]}\n")  # fmt: skip
    outcome = run_sweep(spec, tracking_uri=mlflow_server, workers=2)
    assert outcome.finished == 4
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("bpdiag-http")
    runs = client.search_runs([exp.experiment_id], "tags.`bpdiag.role` = 'run'")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    run = runs[0]
    assert {"gradient_flow.png", "layers.parquet"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    png = client.download_artifacts(run.info.run_id, "gradient_flow.png")
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"


# ---------------------------------------------------------------- kill and resume


@pytest.mark.slow  # separate processes for tens of seconds
def test_sigkill_mid_sweep_then_resume(tmp_path):
    spec = tmp_path / "kill.yaml"
    spec.write_text("name: kill\nseeds: [0, 1, 2]\nbase: {n_samples: 200, width: 16, steps: 300}\n"
                    "parameters:\n  depth: {values: [4, 8]}\n  activation: {values: [tanh, relu]}\n")  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'kill.db'}"
    n_runs = len(load_spec(spec)[1])
    exe = Path(sys.executable).parent / "bpdiag"
    proc = subprocess.Popen([str(exe), "sweep", str(spec), "--tracking-uri", uri, "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    tracker, finished_before = Tracker(uri), []
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            exp = tracker.experiment_id("bpdiag-kill", create=False)
            finished_before = tracker.children(exp, "FINISHED") if exp else []
        except Exception:  # the store is being written to
            finished_before = []
        if len(finished_before) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-sweep
    proc.wait(timeout=30)
    exp = tracker.experiment_id("bpdiag-kill", create=False)
    killed_at = {c.info.run_id for c in tracker.children(exp, "FINISHED")}
    assert 2 <= len(killed_at) < n_runs

    outcome = run_sweep(spec, tracking_uri=uri, workers=2)
    assert outcome.skipped == len(killed_at) and outcome.finished == n_runs - len(killed_at)
    children = tracker.children(exp, "FINISHED")
    keys = [c.data.tags[Tag.RUN_KEY] for c in children]
    assert len(keys) == n_runs and len(set(keys)) == n_runs  # exactly one FINISHED per run_key
    assert killed_at <= {c.info.run_id for c in children}  # no finished result lost
    assert not tracker.children(exp, "RUNNING")  # runs cut off by the kill are marked KILLED


def test_ui_prints_the_runs_table_address(swept, monkeypatch):
    _, uri, outcome, _ = swept
    monkeypatch.setattr(subprocess, "call", lambda cmd: 0)  # do not start the server here
    result = CliRunner().invoke(main, ["ui", "--tracking-uri", uri, "--experiment", "bpdiag-tiny"])
    assert result.exit_code == 0
    assert f"#/experiments/{outcome.experiment_id}?workflowType=machine_learning" in _text(result)


def test_sweep_cli_prints_counts_and_the_ui_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "cli.yaml"
    spec.write_text("name: cli\nbase: {n_samples: 100, width: 4, depth: 2, steps: 5}\n"
                    "parameters:\n  activation: {values: [tanh, relu]}\n")  # fmt: skip
    result = CliRunner().invoke(main, ["sweep", str(spec), "--workers", "1", "--timings"])
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "2 finished" in text and "verdicts by activation" in text
    assert "bpdiag ui" in text and "workflowType=machine_learning" in text
    assert "overhead on training" in text
    assert (tmp_path / "mlflow.db").exists()  # MLflow's default store in the working directory


def test_a_sweep_of_cures_logs_them_and_compares_them(tmp_path):
    """norm and residual are sweep axes and MLflow params; the parent compares them."""
    spec = tmp_path / "cures.yaml"
    spec.write_text("name: c\nbase: {n_samples: 100, width: 6, depth: 4, steps: 10, optimizer: sgd}\n"
                    "parameters:\n  - norm: {values: [none, batchnorm, layernorm]}\n"
                    "  - norm: {values: [batchnorm]}\n    residual: {values: [true]}\n"
                    "    residual_scale: {values: [inv_sqrt_depth]}\n")  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'c.db'}"
    outcome = run_sweep(spec, tracking_uri=uri, workers=1)
    assert outcome.finished == 4
    tracker = Tracker(uri)
    children = tracker.children(outcome.experiment_id, "FINISHED")
    assert {(c.data.params["norm"], c.data.params["residual"]) for c in children} == {
        ("none", "False"),
        ("batchnorm", "False"),
        ("layernorm", "False"),
        ("batchnorm", "True"),
    }
    artifacts = {a.path for a in tracker.client.list_artifacts(outcome.parent_run_id)}
    assert "cures.png" in artifacts
    layers = pd.read_parquet(tracker.client.download_artifacts(children[0].info.run_id,
                                                               "layers.parquet"))  # fmt: skip
    assert {"grad_norm_affine", "delta_rms_normed"} <= set(layers.columns)


# ---------------------------------------------------------------- what the MLflow UI shows


def test_the_table_reads_back_each_runs_config_typed(swept):
    """Every row's RunConfig fields are the ones that ran, typed (MLflow keeps params as
    strings; a "1.0" residual_scale once made a row's fields raw strings: depth "5" ≠ 5)."""
    spec, uri, outcome, _ = swept
    ran = {cfg.run_key: cfg.model_dump() for cfg in load_spec(spec)[1]}
    table = Tracker(uri).table(outcome.experiment_id)
    for row in table.to_dict("records"):
        read = {f: None if pd.isna(row[f]) else row[f] for f in RUN_FIELDS}  # None: NaN in pandas
        assert read == ran[row["run_key"]]


def test_a_childs_start_and_end_are_the_workers(swept):
    """The Duration column shows the run's time on its worker (a claim starts with its sweep);
    the claims it replaced are neither left RUNNING nor shown."""
    from mlflow.entities import ViewType

    _, uri, outcome, seen = swept
    tracker = Tracker(uri)
    by_key = {r.run_key: r for r in seen}
    children = tracker.children(outcome.experiment_id, "FINISHED")
    for child in children:
        result = by_key[child.data.tags[Tag.RUN_KEY]]
        assert child.info.start_time == int(result.started * 1000)
        assert child.info.end_time == int(result.ended * 1000)
        assert child.info.end_time - child.info.start_time < 60_000  # seconds, not the sweep's
    every = tracker.client.search_runs([outcome.experiment_id], run_view_type=ViewType.ALL,
                                       max_results=1000)  # fmt: skip
    assert not [r for r in every if r.info.status == "RUNNING"]
    shown = tracker.runs(outcome.experiment_id)  # active runs only: no retired claim
    runs = {r.info.run_id for r in shown if r.data.tags.get(Tag.ROLE) == "run"}
    assert runs == {c.info.run_id for c in children}


def test_children_are_named_by_verdict_and_what_varies(swept):
    _, uri, outcome, _ = swept
    for child in Tracker(uri).children(outcome.experiment_id, "FINISHED"):
        name, params = child.info.run_name, child.data.params
        assert name.startswith(f"[{child.data.tags[Tag.DIAGNOSIS]}] d{params['depth']} · ")
        assert name.endswith(f" · s{params['seed']}") and params["activation"] in name


def test_notes_describe_the_experiment_the_sweep_and_each_run(swept):
    _, uri, outcome, _ = swept
    client = Tracker(uri).client
    note = client.get_experiment(outcome.experiment_id).tags["mlflow.note.content"]
    assert "`depth`: 3, 6, 4" in note and "summary/verdict/log10_delta_ratio_median" in note
    parent = client.get_run(outcome.parent_run_id).data.tags["mlflow.note.content"]
    assert f"**{N_RUNS} runs**" in parent and "verdict_grid.png" in parent
    assert f"#/experiments/{outcome.experiment_id}/runs/" in parent
    assert parent.count("?workflowType=machine_learning)") == 5  # links to the 5 furthest runs
    for child in Tracker(uri).children(outcome.experiment_id, "FINISHED"):
        text, tags = child.data.tags["mlflow.note.content"], child.data.tags
        assert text.startswith(f"**{tags[Tag.DIAGNOSIS]}**: {tags[Tag.REASON]}")
        ratio = child.data.metrics["summary/verdict/log10_delta_ratio_median"]
        assert f"`summary/verdict/log10_delta_ratio_median` = {ratio:.3g}" in text
        assert f"Timeline: {tags[Tag.HEADLINE]}." in text and tags[Tag.HEADLINE]
        assert tags[Tag.TIMELINE].split(",")[0].endswith("@0") and tags[Tag.FLAGS]


def test_each_child_logs_its_data_set_as_an_input(swept):
    _, uri, outcome, _ = swept
    for child in Tracker(uri).children(outcome.experiment_id, "FINISHED"):
        (given,) = child.inputs.dataset_inputs
        assert given.dataset.name == "spirals" and len(given.dataset.digest) == 8
        assert {t.key: t.value for t in given.tags} == {"mlflow.data.context": "train"}


def test_numbers_are_readable_and_finite(swept):
    """log10 beside each ratio; nothing MLflow would show as 1.8e308 (its ±inf)."""
    import math

    _, uri, outcome, _ = swept
    for child in Tracker(uri).children(outcome.experiment_id, "FINISHED"):
        metrics = child.data.metrics
        assert all(math.isfinite(v) and abs(v) < 1e300 for v in metrics.values())
        for key in ("summary/flow/grad_ratio_first_last", "summary/verdict/delta_ratio_median"):
            log_key = "/log10_".join(key.rsplit("/", 1))
            assert metrics[log_key] == pytest.approx(math.log10(metrics[key]))
        assert "summary/theory/inv_depth_scale_theory" in metrics


def test_diagnosis_json_is_strict_json_with_readable_text(swept):
    import json

    _, uri, outcome, _ = swept
    tracker = Tracker(uri)
    for child in tracker.children(outcome.experiment_id, "FINISHED"):
        path = Path(tracker.client.download_artifacts(child.info.run_id, "diagnosis.json"))
        text = path.read_text(encoding="utf-8")

        def refuse(name):
            raise AssertionError(f"{name} is not JSON")

        data = json.loads(text, parse_constant=refuse)
        assert "\\u" not in text and data["reason"] == child.data.tags[Tag.REASON]
        assert data["headline"] == child.data.tags[Tag.HEADLINE] and data["phases"][0]["start"] == 0
        assert "×" in data["reason"] or child.data.tags[Tag.DIAGNOSIS] in ("dead", "saturated")


def test_summary_csv_has_each_runs_address_in_the_model_training_view(swept):
    _, uri, outcome, _ = swept
    tracker = Tracker(uri)
    summary = pd.read_csv(tracker.client.download_artifacts(outcome.parent_run_id, "summary.csv"))
    for run_id, url in zip(summary["run_id"], summary["url"], strict=True):
        assert url == (f"http://127.0.0.1:5000/#/experiments/{outcome.experiment_id}/runs/"
                       f"{run_id}?workflowType=machine_learning")  # fmt: skip


def test_diagnose_takes_an_id_prefix_and_prints_the_runs_address(swept):
    _, uri, outcome, _ = swept
    child = Tracker(uri).children(outcome.experiment_id, "FINISHED")[0]
    run_id = child.info.run_id
    result = CliRunner().invoke(main, ["diagnose", run_id[:8], "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"/runs/{run_id}?workflowType=machine_learning" in _text(result)


def test_read_only_commands_create_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["diagnose", "0123abcd"], ["compare", "bpdiag-x"], ["ui"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "no MLflow store at" in _text(result), result.output
    assert list(tmp_path.iterdir()) == []
