"""The benchmark's regression guard: which ratios it calls out against the committed ones (no timing)."""
from __future__ import annotations

from bench.guard import TOLERANCE, Regression, regressions

METRIC = "ours ÷ bare-pool floor"


def test_a_ratio_more_than_ten_percent_worse_is_called_out():
    found = regressions("w1", {METRIC: 1.00}, {METRIC: 1.11})
    assert found == [Regression("w1", METRIC, 1.00, 1.11)]
    assert "REGRESSION in w1" in str(found[0]) and "+11%" in str(found[0]) and "1.000" in str(found[0])


def test_within_the_tolerance_or_better_is_not():
    assert TOLERANCE == 0.10
    assert regressions("w1", {METRIC: 1.00}, {METRIC: 1.099}) == []
    assert regressions("w1", {METRIC: 1.20}, {METRIC: 0.90}) == []  # faster is never a regression


def test_each_metric_is_judged_on_its_own():
    committed = {"a": 1.0, "b": 2.0}
    assert [r.metric for r in regressions("s", committed, {"a": 1.05, "b": 2.5})] == ["b"]


def test_nothing_to_compare_with_is_no_regression():
    assert regressions("w1", {}, {METRIC: 5.0}) == []  # results committed before the metric existed
    assert regressions("w1", {"other": 1.0}, {METRIC: 5.0}) == []
    assert regressions("w1", {METRIC: 0.0}, {METRIC: 5.0}) == []  # a broken committed value
