"""Rule evaluation over (step, value) series, against hand-computed expectations."""

from __future__ import annotations

import math
import time

import pytest

from ln_diagnostics.thresholds.engine import (
    RuleIndex,
    RunEvaluator,
    SeriesFold,
    closest_tags,
    evaluate,
    evaluate_series,
    is_settled,
    value_passes,
)
from ln_diagnostics.thresholds.rules import Rule

NAN, INF = math.nan, math.inf
SERIES = [(0, 1.0), (1, 12.0), (2, 3.0), (3, 11.0)]


@pytest.mark.parametrize(
    ("rule", "points", "value", "step", "passed"),
    [
        # over="all": the point furthest beyond (or closest to) a bound
        (Rule(tag="t", max=10.0), SERIES, 12.0, 1, False),
        (Rule(tag="t", max=20.0), SERIES, 12.0, 1, True),
        (Rule(tag="t", min=0.5, max=20.0), SERIES, 1.0, 0, True),
        (Rule(tag="t", min=2.0, max=11.5), SERIES, 1.0, 0, False),
        (Rule(tag="t", min=2.0, max=11.5), [(0, 1.9), (1, 12.0)], 12.0, 1, False),
        (Rule(tag="t", max=10.0), [(0, 1.0), (1, NAN), (2, 50.0), (3, NAN)], NAN, 1, False),
        (Rule(tag="t", max=10.0), [(0, INF)], INF, 0, False),
        (Rule(tag="t", min=0.0), [(0, INF)], INF, 0, True),
        (Rule(tag="t", min=0.0), [(0, -INF), (1, 1.0)], -INF, 0, False),
        (Rule(tag="t", max=10.0), [(0, 10.0)], 10.0, 0, True),  # bounds are inclusive
        # aggregates
        (Rule(tag="t", max=10.0, over="last"), SERIES, 11.0, 3, False),
        (Rule(tag="t", max=10.0, over="last"), [(0, NAN), (1, 2.0)], 2.0, 1, True),
        (Rule(tag="t", max=10.0, over="last"), [(0, 2.0), (1, NAN)], NAN, 1, False),
        (Rule(tag="t", max=10.0, over="max"), SERIES, 12.0, 1, False),
        (Rule(tag="t", min=2.0, over="min"), SERIES, 1.0, 0, False),
        (Rule(tag="t", max=6.0, over="mean"), SERIES, 6.75, 3, False),
        (Rule(tag="t", max=7.0, over="mean"), SERIES, 6.75, 3, True),
        (Rule(tag="t", max=100.0, over="mean"), [(0, 1.0), (1, NAN), (2, 1.0)], NAN, 1, False),
        (Rule(tag="t", max=100.0, over="max"), [(0, 1.0), (1, NAN)], NAN, 1, False),
        (Rule(tag="t", min=-1.0, over="min"), [(0, NAN), (1, 1.0)], NAN, 0, False),
    ],
)
def test_evaluate_series(rule, points, value, step, passed):
    result = evaluate_series(rule, "t", points)
    assert (math.isnan(result.value) and math.isnan(value)) or result.value == value
    assert (result.step, result.passed, result.points) == (step, passed, len(points))


def test_evaluate_series_needs_points():
    with pytest.raises(ValueError, match="no points for tag 't'"):
        evaluate_series(Rule(tag="t", max=1.0), "t", [])
    with pytest.raises(ValueError, match="no points for tag 't' at step >= 5"):
        evaluate_series(Rule(tag="t", max=1.0, after_step=5), "t", [(4, 0.0)])


def test_value_passes():
    rule = Rule(tag="t", min=-1.0, max=1.0)
    assert [value_passes(rule, v) for v in (-1.0, 0.0, 1.0, 1.01, -INF, INF, NAN)] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_after_step_filters_and_point_order_does_not_matter():
    rule = Rule(tag="gradients/*", max=1.0, after_step=2)
    series = {
        "gradients/norm/b": [(3, 1.0), (2, 5.0), (1, 9.0)],
        "gradients/norm/a": [(0, 1.0)],
        "health/grad_norm_total": [(5, 1.0)],
    }
    (result,) = evaluate([rule], series).results
    assert (result.tag, result.value, result.step, result.points) == ("gradients/norm/b", 5.0, 2, 2)
    assert (result.first_step, result.crossings) == (2, 1)


@pytest.mark.parametrize("over", ["all", "last", "mean", "max", "min"])
def test_fold_matches_a_float64_reference_in_any_order(over):
    """Streamed in shuffled order, every aggregate equals numpy's on the step-sorted series."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    steps = rng.permutation(500)
    values = rng.normal(size=500) * 3
    rule = Rule(tag="t", min=-4.0, max=4.0, over=over)
    result = evaluate_series(rule, "t", zip(steps.tolist(), values.tolist(), strict=True))
    ordered = values[np.argsort(steps)]
    outside = np.flatnonzero((ordered < -4.0) | (ordered > 4.0))
    expected = {
        "all": ordered[np.argmax(np.maximum(-4.0 - ordered, ordered - 4.0))],
        "last": ordered[-1],
        "mean": ordered.mean(),
        "max": ordered.max(),
        "min": ordered.min(),
    }[over]
    assert result.value == pytest.approx(expected, rel=1e-12)
    assert result.points == 500
    if over == "all":
        assert (result.first_step, result.crossings) == (int(outside[0]), len(outside))


def test_first_crossing_and_count_are_reported_not_the_first_nan():
    rule = Rule(tag="t", max=10.0)
    result = evaluate_series(rule, "t", [(0, 1.0), (1, 12.0), (2, NAN), (3, 11.0), (4, 2.0)])
    assert math.isnan(result.value) and result.step == 2  # the worst point: the first NaN
    assert (result.first_step, result.crossings) == (1, 3)
    passing = evaluate_series(rule, "t", [(0, 1.0)])
    assert (passing.first_step, passing.crossings) == (None, 0)
    aggregate = evaluate_series(Rule(tag="t", max=1.0, over="mean"), "t", [(0, 1.0), (5, 4.0)])
    assert (aggregate.first_step, aggregate.crossings) == (5, 1)


def test_rules_of_one_tag_with_different_windows_share_nothing():
    rules = [Rule(tag="t", max=1.0), Rule(tag="t", max=1.0, after_step=10), Rule(tag="*", min=0.0)]
    run = RunEvaluator(RuleIndex(rules))
    add = run.sink("t")
    for step, value in [(0, 5.0), (10, 0.5), (11, -1.0)]:
        add(step, value)
    results = run.evaluation().results
    assert [(r.passed, r.points, r.first_step, r.crossings) for r in results] == [
        (False, 3, 0, 1),
        (True, 2, None, 0),
        (False, 3, 11, 1),
    ]


def _cpu_seconds_to_match(n: int) -> float:
    rules = [Rule(tag=f"activations/std/net.{i}", max=1.0) for i in range(n)]
    start = time.process_time()
    run = RunEvaluator(RuleIndex(rules))
    for i in range(n):
        run.sink(f"activations/std/net.{i}")(0, 0.5)
    evaluation = run.evaluation()
    seconds = time.process_time() - start
    assert len(evaluation.results) == n and evaluation.passed
    return seconds


def test_many_exact_rules_are_matched_in_linear_time():
    # CPU time (not wall time: a shared machine's load does not count), and the scaling from n to
    # 4n rules: linear is about 4x, quadratic 16x; the best of three damps the noise.
    small = min(_cpu_seconds_to_match(2000) for _ in range(3))
    large = min(_cpu_seconds_to_match(8000) for _ in range(3))
    assert large < 8.0 * max(small, 1e-3)


def test_fold_without_points_and_unwatched_bounds():
    with pytest.raises(ValueError, match="no points for tag 't' at step >= 3"):
        SeriesFold(3).result(Rule(tag="t", max=1.0), "t")
    fold = SeriesFold()
    fold.add(0, 1.0)
    with pytest.raises(ValueError, match="bounds were not watched"):
        fold.result(Rule(tag="t", max=1.0), "t")


@pytest.mark.parametrize(
    ("rule", "value", "settled"),
    [
        (Rule(tag="t", max=1.0), 2.0, True),
        (Rule(tag="t", max=1.0, over="max"), 2.0, True),
        (Rule(tag="t", min=1.0, over="max"), 0.0, False),
        (Rule(tag="t", min=1.0, over="min"), 0.0, True),
        (Rule(tag="t", max=1.0, over="min"), 2.0, False),
        (Rule(tag="t", max=1.0, over="mean"), 2.0, False),
        (Rule(tag="t", max=1.0, over="mean"), NAN, True),
        (Rule(tag="t", max=1.0, over="last"), NAN, False),
        (Rule(tag="t", max=1.0, over="max"), 0.5, False),
    ],
)
def test_is_settled(rule, value, settled):
    assert is_settled(evaluate_series(rule, "t", [(0, value)])) is settled


def test_evaluate_orders_results_and_reports_unmatched():
    rules = [
        Rule(tag="gradients/norm/*", max=10.0),
        Rule(tag="health/*", max=1.0, after_step=100),
        Rule(tag="nope/*", max=1.0, optional=True),
    ]
    series = {
        "gradients/norm/b": [(0, 20.0)],
        "gradients/norm/a": [(0, 1.0)],
        "health/loss": [(0, 0.5)],
    }
    evaluation = evaluate(rules, series)
    assert [(r.tag, r.passed) for r in evaluation.results] == [
        ("gradients/norm/a", True),
        ("gradients/norm/b", False),
    ]
    assert evaluation.unmatched == (rules[1], rules[2])
    assert not evaluation.passed


def _run_of(rules, series):
    run = RunEvaluator(RuleIndex(rules))
    for tag, points in series.items():
        add = run.sink(tag)
        for step, value in points if add else ():
            add(step, value)
    return run


def test_closest_and_describe_unmatched():
    tags = ["gradients/norm/net.0", "activations/std/net.0", "health/grad_norm_total"]
    assert closest_tags("gradients/nrm/*", tags)[0] == "gradients/norm/net.0"
    assert closest_tags("zzz", tags) == []
    series = {tag: [(0, 1.0), (7, 1.0)] for tag in tags}
    typo, late = Rule(tag="gradients/nrm/*", max=1.0), Rule(tag="health/*", max=1.0, after_step=50)
    run = _run_of([typo, late], series)
    message = run.describe_unmatched(typo)
    assert message.startswith("rule 'gradients/nrm/*' matches no scalar tag; closest: grad")
    message = run.describe_unmatched(late)
    assert "matches 1 tag but none has a point at step >= after_step = 50" in message
    assert "(last logged step: 7)" in message
    lonely = Rule(tag="x", max=1.0)
    assert _run_of([lonely], {}).describe_unmatched(lonely).endswith("no scalar tags at all")


def test_a_tag_offered_twice_keeps_one_set_of_folds():
    run = RunEvaluator(RuleIndex([Rule(tag="t", max=1.0), Rule(tag="t", max=1.0, after_step=1)]))
    add = run.sink("t")
    assert run.sink("t") is add
    add(0, 0.5)
    run.sink("t")(1, 2.0)
    assert [(r.points, r.crossings) for r in run.evaluation().results] == [(2, 1), (1, 1)]
    assert [rule.after_step for rule, _ in run.folds_of("t")] == [0, 1]


def test_run_state_round_trip_gives_the_same_verdicts():
    rules = [Rule(tag="t/*", min=0.0, max=1.0), Rule(tag="t/*", max=1.0, over="last", after_step=2)]
    points = [(0, "t/a", 0.5), (1, "t/a", -1.0), (2, "t/b", NAN), (3, "t/a", 2.0), (4, "u", 1.0)]
    whole, first = RunEvaluator(RuleIndex(rules)), RunEvaluator(RuleIndex(rules))
    for step, tag, value in points:
        for run in (whole, first) if step < 3 else (whole,):
            add = run.sink(tag)
            if add is not None:
                add(step, value)
    resumed = RunEvaluator(RuleIndex(rules))
    assert resumed.load_state_dict(first.state_dict()) == []
    for step, tag, value in points[3:]:
        add = resumed.sink(tag)
        if add is not None:
            add(step, value)
    assert resumed.evaluation() == whole.evaluation()
    assert list(resumed.tags) == list(whole.tags) == ["t/a", "t/b", "u"]
    with pytest.raises(ValueError, match="tag 't/a' was already offered"):
        resumed.load_state_dict(first.state_dict())
