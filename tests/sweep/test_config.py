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
    """A store written before norm/residual (0.2) or the instruments (0.3) existed resumes
    without rerunning anything: a config at their defaults hashes as it did before they
    existed (the pre-0.2 dump)."""
    import hashlib
    import json

    for cfg in (RunConfig(depth=3, lr=0.1, optimizer="sgd"), RunConfig(activation="tanh", width=8),
                RunConfig(clip="norm", clip_value=1.0, dtype="float32")):  # fmt: skip
        dump = {k: v for k, v in cfg.model_dump().items()
                if k not in ("norm", "residual", "residual_scale", "sharpness_every",
                             "jacobian_inputs")}  # fmt: skip
        old = hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]
        assert cfg.run_key == old
    base = RunConfig(depth=3)
    keys = {base.run_key, RunConfig(depth=3, norm="batchnorm").run_key,
            RunConfig(depth=3, norm="layernorm").run_key, RunConfig(depth=3, residual=True).run_key,
            RunConfig(depth=3, residual=True, residual_scale="inv_sqrt_depth").run_key,
            RunConfig(depth=3, residual=True, residual_scale=0.5).run_key,
            RunConfig(depth=3, sharpness_every=5).run_key,
            RunConfig(depth=3, jacobian_inputs=4).run_key}  # fmt: skip
    assert len(keys) == 8


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
        ("name: t\nbase: {residual_scale: inv_depth}\n",
         r"base\.residual_scale: unknown residual_scale 'inv_depth'; valid: .*inv_sqrt_depth"),
        ("name: t\nbase: {residual_scale: true}\n", r"base\.residual_scale: .*a number or a name"),
        # a BatchNorm run whose training split leaves a batch of one row (spirals: 8 rows, 6 to train)
        ("name: t\nbase: {norm: batchnorm, n_samples: 8, batch_size: 5}\n",
         r"base\.batch_size: batchnorm needs at least 2 rows.*6 training rows"),
        ("name: t\nbase: {norm: batchnorm}\nparameters:\n  batch_size: {values: [32, 1]}\n",
         r"parameters\.batch_size \(the run batch_size=1\): batchnorm needs at least 2 rows"),
        # booleans are not numbers
        ("name: t\nbase: {depth: true}\n", r"base\.depth: a number is needed, not a boolean"),
        ("name: t\nparameters:\n  lr: {values: [0.1, false]}\n", r"parameters\.lr\.values\[1\]: a number"),
        ("name: t\nseeds: [0, true]\n", r"seeds\[1\]: a number is needed"),
        ("name: t\nmethod: random\ncount: true\n", r"count: a number is needed"),
        # a key given twice, in block and flow style
        ("name: t\nbase:\n  depth: 3\n  depth: 4\n", r"line 4: duplicate key 'depth' \(first at line 3\)"),
        ("name: t\nbase: {depth: 3, width: 2, depth: 4}\n", r"line 2: duplicate key 'depth'"),
        ("name: t\nname: u\n", r"line 2: duplicate key 'name'"),
        # key paths point where the user must edit
        ("name: t\nbase: {clip: norm}\n", r"spec\.yaml: base\.clip: clip='norm' needs clip_value"),
        ("name: t\nbase: {clip: norm}\nparameters:\n  depth: {values: [2, 3]}\n",
         r"spec\.yaml: base\.clip: clip='norm' needs clip_value"),
        ("name: t\nparameters:\n  clip: {values: [none, norm]}\n",
         r"spec\.yaml: parameters\.clip \(the run clip=norm\): clip='norm' needs clip_value"),
        ("name: t\nbase: {momentum: 0.9}\nparameters:\n  optimizer: {values: [sgd, adam]}\n",
         r"parameters\.optimizer \(the run optimizer=adam\): unknown option\(s\) \['momentum'\]"),
        ("name: t\nmethod: random\ncount: 2\nparameters:\n  depth: {min: 2, max: 5}\n",
         r"parameters\.depth \(the run depth=[0-9.]+\): Input should be a valid integer"),
        # bounds: runs per sweep, memory per run, nothing to run
        ("name: t\nmethod: random\ncount: 100000000\nparameters:\n  lr: {min: 0.001, max: 0.1}\n",
         r"expands to 100,000,000 runs, above the limit of 10,000; .*max_runs: 100000000"),
        ("name: t\nseeds: [0, 1]\nparameters:\n  depth: {values: [2, 3]}\n  width: {values: [2, 3]}\nmax_runs: 7\n",
         r"expands to 8 runs, above the limit of 7"),
        ("name: t\nbase: {width: 100000, depth: 1000}\n", r"base: needs about [0-9.,]+ TiB of memory, above the limit of 8 GiB"),
        ("name: t\nparameters:\n  width: {values: [64, 30000]}\nbase: {depth: 200}\n",
         r"parameters \(the run .*d200×30000.*\): needs about [0-9.,]+ TiB"),
        ("name: t\nparameters: []\n", r"an empty list of grids gives no runs"),
    ],
)  # fmt: skip
def test_bad_specs(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("name: t\nbase: {activation: tanh}  # caf\xe9\n".encode("latin-1"),
         r"not UTF-8 text \(byte 0xe9 at offset \d+\)"),
        (bytes(range(256)) * 4, r"not UTF-8 text \(byte 0x80 at offset 128\)"),
        (b"name: t\x00\n", r"malformed YAML"),
        (b"x" * (2 << 20), r"larger than 1 MiB"),
    ],
)  # fmt: skip
def test_files_that_are_not_utf8_yaml(tmp_path, raw, message):
    path = tmp_path / "spec.yaml"
    path.write_bytes(raw)
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_a_bom_and_a_merge_key_are_fine(tmp_path):
    text = "name: t\nshared: &s {depth: 3}\n"
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + b"name: t\nbase:\n  <<: {depth: 3, width: 5}\n  depth: 4\n")
    assert load_spec(path)[1][0].depth == 4 and text


def test_the_bounds_can_be_raised_by_the_caller(tmp_path):
    path = _write(tmp_path, "name: t\nparameters:\n  depth: {values: [2, 3, 4]}\nmax_runs: 2\n")
    with pytest.raises(SpecError, match="above the limit of 2"):
        load_spec(path)
    assert len(load_spec(path, max_runs=3)[1]) == 3
    big = _write(tmp_path, "name: t\nbase: {width: 6000, depth: 3}\n", "big.yaml")
    with pytest.raises(SpecError, match="GiB of memory"):
        load_spec(big, max_run_gib=0.5)
    assert load_spec(big)[1]
    result = CliRunner().invoke(main, ["sweep", str(path), "--dry-run", "--max-runs", "3"])
    assert result.exit_code == 0 and "3 runs" in " ".join(result.output.split())


def test_memory_estimate_covers_parameters_records_and_data():
    small, wide = RunConfig(depth=3, width=8), RunConfig(depth=3, width=8000)
    assert small.memory_bytes() < 2**20 < 5 * 8 * 8000**2 < wide.memory_bytes() < 8 * 8 * 8000**2
    long = RunConfig(depth=100, width=8, steps=1_000_000, record_every=1)
    assert long.memory_bytes() > 1_000_000 * 100 * 8  # a record of every layer, every step


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


# ---------------------------------------------------------------- fuzzing: SpecError or valid

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                     st.sampled_from(["tanh", "relu", "norm", "adam", "grid", "random", "batchnorm",
                                      "inv_sqrt_depth", "spirals", "digits", "1e-3"]))  # fmt: skip
_KEYS = st.sampled_from(["name", "experiment", "seeds", "base", "parameters", "method", "count",
                         "values", "min", "max", "depth", "width", "lr", "clip", "clip_value",
                         "activation", "norm", "residual", "batch_size", "steps", "n_samples",
                         "dataset", "distribution", "max_runs", "max_run_gib"])  # fmt: skip
_TREES = st.recursive(_SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(_KEYS, kids, max_size=5)), max_leaves=25)  # fmt: skip


def _mutate(data, draw):
    """A shipped spec with one value somewhere replaced by a random tree."""
    if isinstance(data, dict) and data:
        key = draw(st.sampled_from(sorted(data, key=str)))
        if draw(st.booleans()):
            return {**data, key: draw(_TREES)}
        return {**data, key: _mutate(data[key], draw)}
    if isinstance(data, list) and data:
        i = draw(st.integers(0, len(data) - 1))
        return [*data[:i], _mutate(data[i], draw), *data[i + 1 :]]
    return draw(_TREES)


@st.composite
def _specs(draw):
    import yaml

    if draw(st.booleans()):
        base = yaml.safe_load(draw(st.sampled_from(SHIPPED)).read_text())
        data = _mutate(base, draw)
    else:
        data = draw(st.dictionaries(_KEYS, _TREES, max_size=6))
    text = yaml.safe_dump(data, allow_unicode=True)
    if draw(st.booleans()):  # and sometimes bytes that are not YAML, or not text at all
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=8)) + text[cut:]
    return text.encode("utf-8") if draw(st.integers(0, 9)) else draw(st.binary(max_size=64))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])  # fmt: skip
@given(raw=_specs())
def test_any_file_is_a_valid_spec_or_one_spec_error(tmp_path, raw):
    """Random YAML and mutations of the shipped specs: load_spec returns runs that validate,
    or raises SpecError with a one-line message that starts with the file's name; nothing else,
    and never an unbounded expansion."""
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(raw)
    try:
        spec, runs = load_spec(path)
    except SpecError as err:
        message = str(err)
        assert message.startswith(str(path)) and "Traceback" not in message
        return
    assert 1 <= len(runs) <= spec.max_runs
    for cfg in runs[:20]:
        RunConfig(**cfg.model_dump())
