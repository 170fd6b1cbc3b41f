"""``LiveEvaluator``: when each kind of rule is decided, and that its verdicts are the CLI's."""

from __future__ import annotations

import math
import random

import pytest

from ln_diagnostics.diagnose import Finding
from ln_diagnostics.thresholds.engine import evaluate
from ln_diagnostics.thresholds.live import LiveEvaluator, Violation
from ln_diagnostics.thresholds.rules import Rule

NAN = math.nan


def _decided(live, steps):
    """``[(step, rule label, worst tag, failing tags)]`` of the violations as steps arrive."""
    found = []
    for step, scalars in steps:
        for violation in live.add(step, scalars):
            error = violation.error()
            found.append((step, error.rule, error.tag, error.failing))
    return found


@pytest.mark.parametrize(
    ("rule", "values", "decided_at"),
    [
        (Rule(tag="t", max=1.0), [0.5, 2.0, 3.0], 1),  # the first point beyond the bound
        (Rule(tag="t", min=1.0), [2.0, 2.0, 0.5], 2),
        (Rule(tag="t", max=1.0, over="max"), [0.5, 2.0, 0.1], 1),  # a running max above max
        (Rule(tag="t", min=1.0, over="min"), [2.0, 0.5, 3.0], 1),
        (Rule(tag="t", max=1.0, over="mean"), [0.5, NAN, 0.5], 1),  # a NaN: the mean is NaN
        (Rule(tag="t", max=1.0, over="mean"), [0.5, 3.0, 0.5], None),  # could come back
        (Rule(tag="t", min=1.0, over="max"), [0.5, 0.5, 0.5], None),
        (Rule(tag="t", max=1.0, over="last"), [3.0, 3.0, 3.0], None),
        (Rule(tag="t", max=1.0, after_step=2), [3.0, 3.0, 0.5], None),  # before the window
    ],
)
def test_a_rule_is_decided_once_its_verdict_cannot_change(rule, values, decided_at):
    live = LiveEvaluator([rule])
    found = _decided(live, [(step, {"t": value}) for step, value in enumerate(values)])
    assert [step for step, *_ in found] == ([] if decided_at is None else [decided_at])
    if decided_at is None:  # then it is decided on the whole run, as check decides it
        [result] = evaluate([rule], {"t": list(enumerate(values))}).results
        assert [v.rule for v in live.finish()] == ([] if result.passed else [rule])


def test_each_rule_is_reported_once_with_every_tag_failing_it_then():
    rules = [Rule(name="g", tag="g/*", max=1.0), Rule(tag="h", max=1.0, over="max")]
    live = LiveEvaluator(rules)
    found = _decided(
        live,
        [
            (0, {"g/n.10": 0.5, "g/n.2": 0.5, "h": 0.5}),
            (1, {"g/n.10": 5.0, "g/n.2": 3.0, "g/n.3": 0.5, "h": 2.0}),
            (2, {"g/n.10": 9.0, "g/n.3": 7.0, "h": 9.0}),
        ],
    )
    assert found == [
        (1, "g", "g/n.10", ("g/n.2", "g/n.10")),  # worst first, all named in numeric order
        (1, "h", "h", ("h",)),
    ]
    assert live.finish() == []


def test_the_worst_failure_is_a_nan_then_the_furthest_beyond_a_bound():
    rule = Rule(tag="t/*", min=0.0, max=1.0)
    live = LiveEvaluator([rule])
    [violation] = live.add(0, {"t/a": 5.0, "t/b": -9.0, "t/c": NAN, "t/d": 0.5})
    assert violation.worst.tag == "t/c"
    assert violation.failures[0].tag == "t/a"  # the NaN is not first in the step
    without_nan = Violation(rule, tuple(r for r in violation.failures if r.tag != "t/c"))
    assert (without_nan.worst.tag, without_nan.worst.value) == ("t/b", -9.0)
    error = without_nan.error()
    assert (error.bound, error.step, error.failing) == ("min 0, max 1", 0, ("t/a", "t/b"))
    assert Violation(Rule(tag="x", max=1.0, over="mean"), violation.failures[:1]).error().bound == (
        "max 1, over mean"
    )


def test_results_are_those_of_check_on_the_same_points():
    rng = random.Random(0)
    tags = [f"g/norm/net.{i}" for i in range(6)] + ["health/loss"]
    rules = [
        Rule(tag="g/norm/*", max=1.5),
        Rule(tag="g/norm/*", min=0.2, max=1.8, after_step=10),
        Rule(tag="g/norm/net.1", min=0.5, over="min"),
        Rule(tag="health/*", max=1.0, over="mean"),
        Rule(tag="health/loss", max=1.0, over="last", after_step=5),
        Rule(tag="*", max=1.9, over="max"),
        Rule(tag="nothing/*", max=1.0, optional=True),
    ]
    live = LiveEvaluator(rules)
    series: dict[str, list[tuple[int, float]]] = {tag: [] for tag in tags}
    for step in range(0, 60, 3):
        scalars = {tag: rng.uniform(0.0, 2.0) for tag in tags if rng.random() < 0.8}
        if step == 30:
            scalars["g/norm/net.4"] = NAN
        live.add(step, scalars)
        for tag, value in scalars.items():
            series[tag].append((step, value))
    expected = evaluate(rules, series)
    assert live.results() == list(expected.results)
    assert [rule for rule, _ in live.unmatched()] == list(expected.unmatched)
    # the verdicts decided live and at the end are the failing rules of check, once each
    decided = {v.rule for v in live.finish()}
    failed = {r.rule for r in expected.results if not r.passed}
    assert live.state_dict()["reported"] == sorted(rule.key for rule in failed)
    assert decided <= failed


def test_finding_rules_are_judged_on_the_findings_they_are_given():
    rules = [Rule(finding="dead_units"), Rule(finding="vanishing_gradients"), Rule(tag="t", max=1)]
    live = LiveEvaluator(rules)
    assert [rule for rule, _ in live.unmatched()] == rules
    assert live.unmatched()[0][1] == "rule 'finding dead_units' was given no diagnosis to judge"
    live.add(0, {"t": 0.5})
    found = [
        Finding("dead_units", "warning", "net.3", 0, 40, 1.0, "all zero"),
        Finding("dead_units", "warning", "net.5", 10, 40, 0.5, "half zero"),
    ]
    [violation] = live.add_findings(found)
    assert (violation.rule, violation.error().tag, violation.error().step) == (
        rules[0],
        "dead_units net.3",
        0,
    )
    assert live.unmatched() == []
    assert [(r.tag, r.passed) for r in live.results()] == [
        ("t", True),
        ("dead_units net.3", False),
        ("dead_units net.5", False),
        ("vanishing_gradients", True),
    ]
    assert live.add_findings(found) == []  # reported once


def test_state_round_trip_continues_the_folds():
    rules = [Rule(tag="t/*", max=1.0), Rule(tag="t/*", max=1.0, over="mean", after_step=1)]
    whole, first = LiveEvaluator(rules), LiveEvaluator(rules)
    steps = [(0, {"t/a": 0.5, "u": 1.0}), (1, {"t/a": 2.0}), (2, {"t/a": 0.1, "t/b": NAN})]
    for step, scalars in steps:
        whole.add(step, scalars)
    first.add(*steps[0])
    first.add(*steps[1])
    resumed = LiveEvaluator(rules)
    assert resumed.load_state_dict(first.state_dict()) == []
    assert resumed.state_dict() == first.state_dict()
    # the rule over every point was reported before the resume; the NaN settles the mean
    assert [v.rule for v in resumed.add(*steps[2])] == [rules[1]]
    assert resumed.results() == whole.results()
    assert resumed.finish() == whole.finish() == []


def test_resuming_with_changed_rules_names_the_rules_without_earlier_points():
    before = LiveEvaluator([Rule(tag="t", max=1.0), Rule(tag="t", max=1.0, over="mean")])
    before.add(0, {"t": 0.5, "u": 0.5})
    rules = [
        Rule(tag="t", max=1.0),  # the same bound and window: restored
        Rule(tag="t", max=2.0),  # another bound
        Rule(tag="t", max=1.0, over="max", after_step=5),  # another window
        Rule(tag="u", max=1.0),  # a tag no rule kept before
        Rule(tag="v", max=1.0),  # a tag not seen before: nothing lost
    ]
    resumed = LiveEvaluator(rules)
    assert resumed.load_state_dict(before.state_dict()) == rules[1:4]
    resumed.add(1, {"t": 0.7, "u": 0.7, "v": 0.7})
    # another bound shares the fold of its window (all points) but counts crossings from now
    assert [(r.rule, r.points) for r in resumed.results()] == [
        (rules[0], 2),
        (rules[1], 2),
        (rules[3], 1),
        (rules[4], 1),
    ]
