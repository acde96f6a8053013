"""Sweep specs: expansion, run keys, and one clear error per bad file (before anything runs)."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from bpdiag.cli import main
from bpdiag.sweep.config import RunConfig, SpecError, SweepSpec, expand, load_spec


def _write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_union_and_seeds(tmp_path):
    path = _write(tmp_path, """
name: t
seeds: [0, 1]
base: {width: 8, steps: 10}
parameters:
  - depth: {values: [2, 3]}
    activation: {values: [tanh, relu]}
  - optimizer: {values: [sgd, adam]}
""")  # fmt: skip
    spec, runs = load_spec(path)
    assert len(runs) == (4 + 2) * 2 and spec.experiment_name == "bpdiag-t"
    assert len({r.run_key for r in runs}) == len(runs)
    assert {r.width for r in runs} == {8} and {r.seed for r in runs} == {0, 1}


def test_duplicate_points_are_run_once(tmp_path):
    path = _write(tmp_path, """
name: t
parameters:
  - depth: {values: [2, 3]}
  - depth: {values: [3, 4]}
""")  # fmt: skip
    assert [r.depth for r in load_spec(path)[1]] == [2, 3, 4]


def test_run_key_is_stable_and_covers_every_field():
    a = RunConfig(depth=3, lr=0.1, optimizer="sgd")
    assert (
        a.run_key == RunConfig(optimizer="sgd", lr=0.1, depth=3).run_key == "f9d520570090ea1c"
    )  # same on every machine
    assert len(a.run_key) == 16
    for change in (
        {"depth": 4},
        {"lr": 0.2},
        {"seed": 1},
        {"dtype": "float32"},
        {"clip": "value", "clip_value": 1.0},
    ):
        assert (
            RunConfig(**{"depth": 3, "lr": 0.1, "optimizer": "sgd", **change}).run_key != a.run_key
        )


def test_new_fields_keep_the_keys_of_configs_that_leave_them_unset():
    """A store written before norm/residual existed resumes without rerunning anything: a
    config at their defaults hashes as it did before they existed (the pre-0.2 dump)."""
    import hashlib
    import json

    for cfg in (RunConfig(depth=3, lr=0.1, optimizer="sgd"), RunConfig(activation="tanh", width=8),
                RunConfig(clip="norm", clip_value=1.0, dtype="float32")):  # fmt: skip
        dump = {k: v for k, v in cfg.model_dump().items()
                if k not in ("norm", "residual", "residual_scale")}  # fmt: skip
        old = hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]
        assert cfg.run_key == old
    base = RunConfig(depth=3)
    keys = {base.run_key, RunConfig(depth=3, norm="batchnorm").run_key,
            RunConfig(depth=3, norm="layernorm").run_key, RunConfig(depth=3, residual=True).run_key,
            RunConfig(depth=3, residual=True, residual_scale="inv_sqrt_depth").run_key,
            RunConfig(depth=3, residual=True, residual_scale=0.5).run_key}  # fmt: skip
    assert len(keys) == 6


def test_random_method_is_seeded(tmp_path):
    text = """
name: r
method: random
count: 5
sample_seed: 3
parameters:
  lr: {min: 0.001, max: 0.1, distribution: log_uniform}
  depth: {min: 2, max: 6, distribution: int_uniform}
  activation: {values: [tanh, relu]}
"""
    runs = load_spec(_write(tmp_path, text))[1]
    again = load_spec(_write(tmp_path, text, "b.yaml"))[1]
    assert [r.run_key for r in runs] == [r.run_key for r in again] and len(runs) == 5
    assert all(0.001 <= r.lr <= 0.1 and 2 <= r.depth <= 6 for r in runs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: t\nbase: {widht: 3}\n", r"base\.widht: unknown key; allowed: dataset, n_samples"),
        ("name: t\nparameters:\n  activation: {values: [tanh, swish]}\n",
         r"parameters\.activation\.values\[1\]: unknown activation 'swish'; valid: elu"),
        ("name: t\nparameters:\n  depth: {values: [3, -1]}\n",
         r"parameters\.depth\.values\[1\]: Input should be greater than or equal to 1 \(got -1\)"),
        ("name: t\nparameters:\n  depth: {valus: [3]}\n",
         r"parameters\.depth\.valus: unknown key; allowed: values, min, max, distribution"),
        ("name: t\nfoo: 1\n", r"spec\.yaml: foo: unknown key; allowed: name, experiment"),
        ("name: t\nparameters: [\n", r"malformed YAML at line 3"),
        ("name: t\nparameters:\n  clip: {values: [norm]}\n", r"clip='norm' needs clip_value"),
        ("name: t\nparameters:\n  lr: {values: [abc]}\n", r"parameters\.lr\.values\[0\]: Input should be a valid number"),
        ("name: t\nmethod: random\n", r"method random needs count"),
        ("name: t\nbase: {steps: 2.5}\n", r"base\.steps: Input should be a valid integer.*\(got 2\.5\)"),
        ("name: t\nparameters:\n  - depth: {values: [3]}\n  - width: {values: [0]}\n",
         r"parameters\[1\]\.width\.values\[0\]"),
        ("- a\n", r"must be a mapping"),
        ("name: t\nseeds: [0, 0]\n", r"seeds: seeds must be distinct"),
        ("name: t\nparameters:\n  depth: 5\n", r"parameters\.depth: an axis must be a mapping"),
        ("name: t\nparameters:\n  seed: {values: [1, 2]}\n", r"parameters\.seed: use the top-level seeds"),
        ("name: t\nbase: {init: normal_x}\n", r"base\.init: init 'normal_x'"),
        ("name: t\nbase: {optimizer: adam, momentum: 0.9}\n", r"unknown option\(s\) \['momentum'\] for optimizer 'adam'"),
        ("name: bad name\n", r"name: String should match pattern"),
        ("name: t\nbase: {lr: .nan}\n", r"base\.lr: .*finite"),
        ("name: t\nparameters:\n  norm: {values: [batchnorm, groupnorm]}\n",
         r"parameters\.norm\.values\[1\]: unknown norm 'groupnorm'; valid: batchnorm, layernorm, none"),
        ("name: t\nbase: {residual: true, residual_scale: 0}\n", r"base\.residual_scale"),
        ("name: t\nbase: {residual_scale: inv_depth}\n", r"base\.residual_scale"),
    ],
)  # fmt: skip
def test_bad_specs(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(info.value).startswith(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"nope\.yaml: no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_cli_rejects_a_bad_spec_with_code_2_and_creates_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: t\nbase: {depth: 0}\n")
    result = CliRunner().invoke(main, ["sweep", str(path)])
    assert result.exit_code == 2
    assert "base.depth" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_dry_run_prints_the_expanded_table(tmp_path):
    path = _write(tmp_path, "name: t\nseeds: [0, 1]\nparameters:\n  depth: {values: [2, 3]}\n")
    result = CliRunner().invoke(main, ["sweep", str(path), "--dry-run"])
    text = " ".join(result.output.split())  # undo rich's wrapping of the long temp path
    assert result.exit_code == 0 and "4 runs" in text and "depth" in text


SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"  # the repository's, from anywhere
SHIPPED = sorted(SWEEPS.glob("*.yaml"))


def test_the_shipped_specs_are_found():
    assert {p.stem for p in SHIPPED} >= {"default", "smoke", "vanishing", "exploding"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_specs_are_valid(path):
    spec, runs = load_spec(path)
    assert isinstance(spec, SweepSpec) and runs
    assert expand(spec) == runs


def test_default_spec_covers_what_make_sweep_must_show():
    runs = load_spec(SWEEPS / "default.yaml")[1]
    values = lambda f: {getattr(r, f) for r in runs}  # noqa: E731
    assert max(values("depth")) >= 30
    assert {"sigmoid", "tanh", "relu"} <= values("activation")
    assert {"sgd", "momentum", "adam"} <= values("optimizer")
    assert {"none", "norm", "agc"} <= values("clip")
    assert "normal_0.25" in values("init") and len(values("init")) >= 3
    assert values("norm") == {"none", "batchnorm", "layernorm"} and values("residual") == {
        False,
        True,
    }
