"""The notes MLflow shows as Descriptions: the number the verdict reads, in every case."""

import pandas as pd

from bpdiag.sweep.config import RunConfig
from bpdiag.sweep.execute import RunResult
from bpdiag.sweep.notes import VERDICT_LOG10_KEY, child_note, parent_note


def _result(ratio: float, label: str) -> RunResult:
    return RunResult(RunConfig(), "FINISHED", label=label, reason="because",
                     evidence={"delta_ratio_median": ratio})  # fmt: skip


def test_a_child_note_gives_the_log10_the_verdict_reads():
    note = child_note(_result(1e-3, "vanishing"))
    assert note.startswith("**vanishing**: because.")
    assert f"`{VERDICT_LOG10_KEY}` = -3. " in note
    assert "| `summary/verdict/delta_ratio_median` | 0.001 |" in note


def test_a_ratio_of_exactly_zero_reads_minus_infinity_not_a_dash():
    note = child_note(_result(0.0, "vanishing"))
    assert f"`{VERDICT_LOG10_KEY}` = −∞ (the ratio is exactly 0; logged as -324)" in note


def test_the_parent_lists_a_dead_signal_first_among_the_furthest_from_healthy():
    table = pd.DataFrame({"run_id": ["a", "b", "c"], "name": ["A", "B", "C"],
                          "label": ["healthy", "vanishing", "vanishing"],
                          "delta_ratio_median": [0.5, 1e-9, 0.0]})  # fmt: skip
    note = parent_note(table, {"c": "#/c"}, ["verdict_grid.png"], "p")
    assert "**3 runs**: 2 vanishing, 1 healthy" in note
    assert "![verdict_grid.png](get-artifact?path=verdict_grid.png&run_uuid=p)" in note
    worst = [line for line in note.splitlines() if line.startswith("- ")]
    assert worst[0].startswith("- [C](#/c): −∞") and worst[1] == "- B: -9"
