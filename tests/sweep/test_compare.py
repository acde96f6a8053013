"""Comparing runs: a group whose runs all diverged has no mean (not 0), and says so."""

import math

import pandas as pd

from bpdiag.sweep.compare import aggregate
from bpdiag.sweep.figures import metric_bars


def _runs() -> pd.DataFrame:
    nan = math.nan  # a diverged run logs no final_loss: it reads back as NaN
    return pd.DataFrame({
        "optimizer": ["sgd", "sgd", "adam", "adam"],
        "seed": [0, 1, 0, 1],
        "final_loss": [nan, nan, 0.25, 0.75],
        "label": ["diverged", "diverged", "healthy", "healthy"],
    })  # fmt: skip


def test_a_group_of_diverged_runs_has_no_mean_and_counts_them():
    table = aggregate(_runs(), ["optimizer"], "final_loss").set_index("optimizer")
    assert table.loc["adam", "mean"] == 0.5 and table.loc["adam", "n"] == 2
    assert math.isnan(table.loc["sgd", "mean"]) and table.loc["sgd", "n"] == 0
    assert table.loc["sgd", "diverged"] == 2 and table.loc["adam", "diverged"] == 0


def test_the_bars_name_the_diverged_runs_they_leave_out():
    fig = metric_bars(aggregate(_runs(), ["optimizer"], "final_loss"), ["optimizer"], "final_loss")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert sorted(labels) == ["adam", "sgd (2 diverged)"]


def test_run_names_lead_with_what_varies_and_end_with_the_seed():
    from bpdiag.sweep.compare import run_names
    from bpdiag.sweep.config import RunConfig

    configs = [RunConfig(depth=d, activation=a, seed=s, clip=c, clip_value=1.0 if c != "none"
                         else None)
               for d in (5, 30) for a in ("tanh", "relu") for s in (0, 1)
               for c in ("none", "norm")]  # fmt: skip
    names = run_names(configs)
    assert len(set(names.values())) == len(configs)  # one name per configuration
    first = RunConfig(depth=30, activation="relu", seed=1, clip="norm", clip_value=1.0)
    assert names[first.run_key] == "d30 · relu · clip norm 1.0 · s1"
    plain = RunConfig(depth=5, activation="tanh", seed=0)
    assert names[plain.run_key] == "d5 · tanh · no clip · s0"
    assert run_names([plain]) == {plain.run_key: plain.name}  # nothing varies: the full name
