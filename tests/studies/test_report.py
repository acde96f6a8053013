"""report.md's pieces: tables people read, checks that count honestly, figures beside it."""

import math

import numpy as np
from matplotlib.figure import Figure

from bpdiag.studies.report import Check, Report, markdown_table, within_log


def test_a_markdown_table_right_aligns_numbers_and_escapes_bars():
    text = markdown_table([{"a": "x|y", "n": 1.23456}, {"a": "z", "n": 2}])
    assert text.splitlines() == ["| a | n |", "| --- | ---: |", "| x\\|y | 1.23 |", "| z | 2 |"]
    assert markdown_table([]) == "(no rows)"


def test_agreement_within_a_log_tolerance():
    assert within_log(0.109, 0.083, 0.4) and not within_log(0.776, 0.41, 0.4)
    assert within_log(math.nan, 1.0, 0.4) is None and within_log(0.0, 1.0, 0.4) is None


def test_a_numpy_comparison_counts_as_agreement():
    check = Check("q", "1", 1.0, "exact", np.int64(3) == 3)
    assert check.agrees is True and check.verdict == "✅ agrees"
    assert Check("q", "1", math.nan, "", None).verdict == "– not comparable"


def test_a_report_writes_its_figures_beside_it(tmp_path):
    report = Report("Title")
    report.check(Check("ratio", "0.5", 0.52, "±10 %", True))
    fig = Figure()
    fig.subplots().plot([1, 2], [3, 4])
    report.figure("f.png", fig, "a caption")
    path = report.write(tmp_path, "Intro.")
    text = path.read_text("utf-8")
    assert text.startswith("# Title\n\nIntro.\n\n## Headline\n\n| quantity |")
    assert "| ratio | 0.5 | 0.52 | ±10 % | ✅ agrees |" in text
    assert "![a caption](f.png)" in text and (tmp_path / "f.png").stat().st_size > 1000
