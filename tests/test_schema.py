"""The record schema is the one declaration: History's columns, the summary, the evidence and
the MLflow keys all come from it, and no number is logged under two names."""

import numpy as np
import pytest
from problems import make_problem

from bpdiag import MLP, schema, train
from bpdiag._core import slots


@pytest.fixture(scope="module")
def history():
    X, Y = make_problem("bce", m=24, n_out=1)
    net = MLP([5, 8, 8, 1], activation="tanh", seed=1)
    return train(net, X, Y, steps=12, record_every=4, clip="norm", clip_value=0.5,
                 eval_data=(X, Y), sharpness_every=1, jacobian_inputs=2)  # fmt: skip


def test_every_slot_is_declared_once_in_slot_order():
    assert [s.column for s in schema.STEP_SERIES] == list(slots.STEP_SLOTS)
    assert [s.column for s in schema.LAYER_SERIES] == list(slots.LAYER_SLOTS)
    with pytest.raises(ValueError, match="each slot once"):
        schema._series(("a", "b"), schema.Series("a", None, ""))
    with pytest.raises(ValueError, match="each slot once"):
        schema._series(("a",), schema.Series("a", None, ""), schema.Series("a", "k", ""))


def test_history_columns_are_the_schema(history):
    assert list(history.steps.columns) == [s.column for s in schema.STEP_SERIES]
    assert list(history.layers.columns) == ["step", "layer"] + [
        s.column for s in schema.LAYER_SERIES
    ]


def test_summary_and_evidence_are_the_schema(history):
    assert list(history.summary) == list(schema.SUMMARY_NAMES)
    assert list(history.diagnosis.evidence) == list(schema.EVIDENCE_NAMES)
    for name, value in history.diagnosis.evidence.items():  # one number, one name
        assert history.summary[name] == value or (
            np.isnan(value) and np.isnan(history.summary[name])
        )


def test_without_eval_data_the_test_metrics_are_absent():
    X, Y = make_problem("bce", m=8, n_out=1)
    hist = train(MLP([5, 4, 1]), X, Y, steps=2)
    assert set(schema.SUMMARY_NAMES) - set(hist.summary) == {"test_loss", "test_accuracy"}


def test_mlflow_keys_are_unique_and_every_logged_key_is_declared(history):
    from bpdiag.sweep.config import RunConfig
    from bpdiag.sweep.execute import RunResult
    from bpdiag.sweep.tracking import Tracker

    summary_keys = [k for s in schema.SUMMARY for k in s.keys]
    keys = [k for s in schema.STEP_SERIES for k in s.keys] + summary_keys
    keys += [s.key for s in schema.SHARPNESS_SERIES]
    keys += [schema.timing_key(t) for t in schema.TIMINGS]
    keys += [p.key(when) for p in schema.PROFILES for when, _ in schema.PROFILE_AT]
    prefixes = [s.key for s in schema.LAYER_SERIES if s.key]
    assert len(keys) == len(set(keys)) and len(prefixes) == len(set(prefixes))
    layer_keys = [s.layer_key(1, 3) for s in schema.LAYER_SERIES if s.key]
    assert not set(keys) & set(layer_keys)
    # MLflow's chart view: sections (a key's part before its last "/") in alphabetical order,
    # keys without one last; the batch curves, the depth profiles and the step series of the
    # layers come before any one-number summary
    sections = sorted({k.rsplit("/", 1)[0] for k in keys + layer_keys if "/" in k})
    summary_sections = {k.rsplit("/", 1)[0] for k in summary_keys}
    assert sections[:3] == ["batch", "depth/log10_delta", "depth/log10_grad"]
    first_summary = min(sections.index(x) for x in summary_sections)
    assert max(sections.index(k.rsplit("/", 1)[0]) for k in layer_keys) < first_summary
    # the chart view cuts titles at about 24 characters: what tells a section's charts apart
    # (the part after its last "/") starts within them
    longest = max(len(k.rsplit("/", 1)[0]) for k in keys + layer_keys)
    assert longest <= 20, longest

    d = history.diagnosis
    result = RunResult(RunConfig(depth=3, width=8, clip="norm", clip_value=0.5), "FINISHED",
                       label=d.label, reason=d.reason, evidence=d.evidence,
                       summary=history.summary, steps=history.steps, layers=history.layers,
                       sharpness=history.sharpness,
                       timings={t: 1.0 for t in schema.TIMINGS})  # fmt: skip
    metrics = Tracker.metrics(result)
    logged = [m.key for m in metrics]
    assert {s.key for s in schema.SHARPNESS_SERIES} <= set(logged)
    assert "summary/instruments/jacobian_gain" in logged
    layer_keys = {
        s.layer_key(layer, 3) for s in schema.LAYER_SERIES if s.key for layer in (1, 2, 3)
    }
    assert set(logged) <= set(keys) | layer_keys
    once = [k for k in logged if k in summary_keys]
    assert len(once) == len(set(once))  # each summary number once under each of its keys
    for scalar in schema.SUMMARY:  # and back: the same number
        value = history.summary.get(scalar.name, np.nan)
        back = scalar.from_mlflow({m.key: m.value for m in metrics if m.key in scalar.keys})
        if np.isfinite(value):
            assert back == pytest.approx(value), scalar.name
        elif scalar.scale != "inverse":
            assert back is None, scalar.name  # no NaN, no ±1.8e308 stand-in for ±inf
    assert all(np.isfinite(m.value) for m in metrics)
    step_keys = {s.key for s in schema.STEP_SERIES if s.key}
    assert step_keys <= set(logged)  # clipping is on: its two series are logged too
    unclipped = RunResult(RunConfig(depth=3, width=8), "FINISHED", summary={},
                          steps=history.steps, layers=history.layers)  # fmt: skip
    dropped = {s.key for s in schema.STEP_SERIES if s.clipped_only}
    assert not dropped & {m.key for m in Tracker.metrics(unclipped)}


def test_depth_profiles_have_the_layer_as_step(history):
    from bpdiag.sweep.config import RunConfig
    from bpdiag.sweep.execute import RunResult
    from bpdiag.sweep.tracking import Tracker

    result = RunResult(RunConfig(depth=3, width=8), "FINISHED", summary=history.summary,
                       steps=history.steps, layers=history.layers)  # fmt: skip
    metrics = Tracker.metrics(result)
    layers = history.layers
    for profile in schema.PROFILES:
        for when, at in schema.PROFILE_AT:
            points = {m.step: m.value for m in metrics if m.key == profile.key(when)}
            records = sorted(layers["step"].unique())
            record = layers[layers["step"] == records[round(at * (len(records) - 1))]]
            expected = dict(zip(record["layer"], np.log10(record[profile.column]), strict=True))
            assert points == pytest.approx(expected), (profile.key(when), points)


def test_the_inverse_depth_scale_is_finite_at_criticality():
    scalar = next(s for s in schema.SUMMARY if s.name == "depth_scale_theory")
    assert scalar.mlflow(np.inf) == {"summary/theory/inv_depth_scale_theory": 0.0}
    assert scalar.from_mlflow({"summary/theory/inv_depth_scale_theory": 0.0}) == np.inf
    assert scalar.mlflow(4.0) == {"summary/theory/inv_depth_scale_theory": 0.25}


def test_layer_keys_sort_by_layer():
    series = schema.LAYER_SERIES[0]
    assert series.layer_key(7, 30) == "layer/grad_norm/07"
    assert series.layer_key(7, 120) == "layer/grad_norm/007"
    keys = [series.layer_key(layer, 120) for layer in range(1, 121)]
    assert keys == sorted(keys)


@pytest.mark.parametrize("depth", [1, 2, 7, 8, 9, 30, 100])
def test_charted_layers_are_the_first_the_last_and_evenly_between(depth):
    layers = schema.charted_layers(depth)
    assert layers[0] == 1 and layers[-1] == depth and layers == sorted(set(layers))
    assert len(layers) == min(depth, schema.LAYER_CHARTS)
    gaps = np.diff(layers)
    assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1


def test_a_deep_net_charts_a_few_layers_and_profiles_every_one():
    from bpdiag.sweep.config import RunConfig
    from bpdiag.sweep.execute import RunResult
    from bpdiag.sweep.tracking import Tracker

    X, Y = make_problem("bce", m=16, n_out=1)
    hist = train(MLP([5] + [6] * 11 + [1], seed=2), X, Y, steps=3, record_every=1)
    result = RunResult(RunConfig(depth=12, width=6), "FINISHED", summary={},
                       steps=hist.steps, layers=hist.layers)  # fmt: skip
    metrics = Tracker.metrics(result)
    charted = schema.charted_layers(12)
    for series in (s for s in schema.LAYER_SERIES if s.key):
        logged = {m.key for m in metrics if m.key.startswith(series.key + "/")}
        assert logged == {series.layer_key(layer, 12) for layer in charted}
    profile = schema.PROFILES[0].key("0_init")
    assert sorted(m.step for m in metrics if m.key == profile) == list(range(1, 13))


def test_a_diverged_run_logs_nothing_from_its_divergence_on(history):
    """Series stop before diverged_step, and the losses at the end (overflowed) are left out:
    an MLflow chart or mean would take 1e266 or 1.8e308 (its ±inf) for a value."""
    from bpdiag.sweep.config import RunConfig
    from bpdiag.sweep.execute import RunResult
    from bpdiag.sweep.tracking import Tracker

    summary = {**history.summary, "diverged_step": 8.0}
    result = RunResult(RunConfig(depth=3, width=8), "FINISHED", label="diverged", reason="",
                       evidence={}, summary=summary, steps=history.steps,
                       layers=history.layers)  # fmt: skip
    metrics = Tracker.metrics(result)
    profiles = {p.key(when) for p in schema.PROFILES for when, _ in schema.PROFILE_AT}
    over_steps = [m for m in metrics if m.key not in profiles and m.step > 0]
    assert over_steps and max(m.step for m in over_steps) == 4  # records at 0, 4 | 8, 12
    keys = {m.key for m in metrics}
    for name in ("final_loss", "test_loss", "loss_end", "delta_ratio_end"):
        scalar = next(s for s in schema.SUMMARY if s.name == name)
        assert not keys & set(scalar.keys), name
    assert "summary/outcome/diverged_step" in keys and "summary/outcome/loss_init" in keys


def test_a_ratio_of_exactly_zero_still_logs_the_log10_the_verdict_reads():
    ratio = next(s for s in schema.SUMMARY if s.name == "delta_ratio_median")
    assert ratio.mlflow(0.0) == {ratio.key: 0.0, ratio.log10_key: schema.LOG10_OF_ZERO}
    assert schema.LOG10_OF_ZERO < np.log10(np.nextafter(0.0, 1.0))  # below every positive double
    assert ratio.mlflow(1e-3)[ratio.log10_key] == pytest.approx(-3.0)
    assert ratio.mlflow(float("nan")) == {} and ratio.log10_key not in ratio.mlflow(-1.0)
