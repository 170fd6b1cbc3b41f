"""Evaluate threshold rules over logged scalar series.

A *series* is the list of ``(step, value)`` points of one scalar tag. The engine is pure Python
and is shared by the ``DiagnosticThresholds`` callback (live values) and ``ln-diagnostics check``
(event files), so both reach the same verdict on the same numbers.

Semantics:

* A value fails a bound when it is NaN, below ``min`` or above ``max`` (bounds are inclusive;
  ``inf`` fails a bound it lies beyond).
* ``over="all"`` checks every point; the reported value is the *worst* point: the first NaN if
  there is one, otherwise the point furthest beyond (or, when passing, closest to) a bound.
* ``over="last" | "mean" | "max" | "min"`` reduces the series to one value and checks it.
  A NaN anywhere makes ``mean``/``max``/``min`` NaN (so the rule fails); ``last`` looks only at
  the point with the highest step. The reported step is that of the last point (``last``,
  ``mean``), of the extreme (``max``, ``min``) or of the first NaN.
* Only points with ``step >= rule.after_step`` count.

Example:
    >>> from ln_diagnostics.thresholds.rules import Rule
    >>> rule = Rule(tag="gradients/norm/*", max=10.0)
    >>> result = evaluate_series(rule, "gradients/norm/fc", [(0, 1.0), (1, 12.0), (2, 3.0)])
    >>> result.passed, result.value, result.step
    (False, 12.0, 1)
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ln_diagnostics.thresholds.rules import Rule

Point = tuple[int, float]
Series = Sequence[Point]


@dataclass(frozen=True)
class RuleResult:
    """The verdict of one rule on one tag.

    Attributes:
        rule: the rule.
        tag: the scalar tag.
        value: the worst point (``over="all"``) or the aggregate value.
        step: the step the value belongs to (see the module docstring).
        passed: whether the value is within the rule's bounds.
        points: how many points were considered.
    """

    rule: Rule
    tag: str
    value: float
    step: int
    passed: bool
    points: int

    @property
    def bound(self) -> str:
        """The rule's bounds in words, e.g. ``"max 10"``."""
        return self.rule.bound_text


@dataclass(frozen=True)
class Evaluation:
    """All verdicts of a set of rules on one run.

    Attributes:
        results: one result per (rule, matched tag), in rule order then tag order.
        unmatched: rules that matched no tag with a point at ``step >= after_step``.
    """

    results: tuple[RuleResult, ...]
    unmatched: tuple[Rule, ...]

    @property
    def passed(self) -> bool:
        """``True`` when no result failed."""
        return all(result.passed for result in self.results)


def value_passes(rule: Rule, value: float) -> bool:
    """Whether one value lies within the rule's bounds (NaN never does).

    Example:
        >>> value_passes(Rule(tag="x", min=0.0), float("inf"))
        True
        >>> value_passes(Rule(tag="x", max=1.0), float("nan"))
        False
    """
    if math.isnan(value):
        return False
    if rule.min is not None and value < rule.min:
        return False
    return rule.max is None or value <= rule.max


def _excess(rule: Rule, value: float) -> float:
    """How far a value lies beyond the nearest bound (negative: inside, the headroom)."""
    if math.isnan(value):
        return math.inf
    distances = []
    if rule.min is not None:
        distances.append(rule.min - value)
    if rule.max is not None:
        distances.append(value - rule.max)
    return max(distances)


def matches(rule: Rule, tag: str) -> bool:
    """Whether a tag matches the rule's glob (case-sensitive; ``*`` crosses ``/``).

    Example:
        >>> matches(Rule(tag="gradients/*", max=1.0), "gradients/norm/encoder.0")
        True
    """
    return fnmatch.fnmatchcase(tag, rule.tag)


def select(rule: Rule, series_by_tag: Mapping[str, Series]) -> dict[str, list[Point]]:
    """The rule's matching tags with their points at ``step >= after_step``.

    Tags left without points are dropped. Points are sorted by step (stable, so of two points
    at the same step the later-written one comes last).
    """
    selected: dict[str, list[Point]] = {}
    for tag in sorted(series_by_tag):
        if not matches(rule, tag):
            continue
        points = sorted(
            ((int(s), float(v)) for s, v in series_by_tag[tag] if s >= rule.after_step),
            key=lambda point: point[0],
        )
        if points:
            selected[tag] = points
    return selected


def evaluate_series(rule: Rule, tag: str, points: Series) -> RuleResult:
    """Evaluate one rule on one tag's points (already filtered by ``after_step``).

    Args:
        rule: the rule.
        tag: the tag, copied into the result.
        points: ``(step, value)`` pairs sorted by step; at least one.

    Returns:
        The verdict with the worst or aggregate value.

    Raises:
        ValueError: ``points`` is empty.

    Example:
        >>> rule = Rule(tag="health/loss", max=1.0, over="mean")
        >>> evaluate_series(rule, "health/loss", [(0, 0.5), (1, 2.0)]).value
        1.25
    """
    if not points:
        raise ValueError(f"evaluate_series: no points for tag {tag!r}")
    first_nan = next((p for p in points if math.isnan(p[1])), None)
    if rule.over == "all":
        step, value = first_nan or max(points, key=lambda p: _excess(rule, p[1]))
    elif rule.over == "last":
        step, value = points[-1]
    elif first_nan is not None:
        step, value = first_nan
    elif rule.over == "max":
        step, value = max(points, key=lambda p: p[1])
    elif rule.over == "min":
        step, value = min(points, key=lambda p: p[1])
    else:  # mean
        step, value = points[-1][0], sum(v for _, v in points) / len(points)
    return RuleResult(rule, tag, value, step, value_passes(rule, value), len(points))


def is_settled(result: RuleResult) -> bool:
    """Whether a failure on a partial series will still be a failure once more points arrive.

    Always true for ``over="all"``; for aggregates only when the aggregate can no longer come
    back within bounds: a NaN in ``mean``/``max``/``min``, a running ``max`` above ``max``, a
    running ``min`` below ``min``. The callback uses this to stop a run early without ever
    disagreeing with ``ln-diagnostics check`` on the finished run.
    """
    if result.passed:
        return False
    rule, value = result.rule, result.value
    if rule.over == "all":
        return True
    if rule.over in ("mean", "max", "min") and math.isnan(value):
        return True
    if rule.over == "max" and rule.max is not None and value > rule.max:
        return True
    return rule.over == "min" and rule.min is not None and value < rule.min


def evaluate(rules: Iterable[Rule], series_by_tag: Mapping[str, Series]) -> Evaluation:
    """Evaluate every rule on every matching tag of one run.

    Example:
        >>> rules = [Rule(tag="gradients/norm/*", max=10.0), Rule(tag="typo/*", max=1.0)]
        >>> ev = evaluate(rules, {"gradients/norm/fc": [(0, 1.0)]})
        >>> [r.passed for r in ev.results], [r.tag for r in ev.unmatched]
        ([True], ['typo/*'])
    """
    results: list[RuleResult] = []
    unmatched: list[Rule] = []
    for rule in rules:
        selected = select(rule, series_by_tag)
        if not selected:
            unmatched.append(rule)
        results.extend(evaluate_series(rule, tag, points) for tag, points in selected.items())
    return Evaluation(tuple(results), tuple(unmatched))


def closest_tags(pattern: str, tags: Iterable[str], n: int = 3) -> list[str]:
    """Tags that look like a glob that matched nothing, for "did you mean" messages.

    Example:
        >>> closest_tags("gradients/nrom/*", ["gradients/norm/fc", "health/loss"])
        ['gradients/norm/fc']
    """
    candidates = sorted(set(tags))
    stem = pattern.replace("*", "").replace("?", "")
    by_prefix = {tag: tag[: len(pattern)] for tag in candidates}
    scored = [
        (
            max(
                difflib.SequenceMatcher(None, pattern, cut).ratio(),
                difflib.SequenceMatcher(None, stem, cut).ratio(),
            ),
            tag,
        )
        for tag, cut in by_prefix.items()
    ]
    scored = [item for item in scored if item[0] >= 0.5]
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [tag for _, tag in scored[:n]]


def describe_unmatched(
    rule: Rule, series_by_tag: Mapping[str, Series], *, last_step: int | None = None
) -> str:
    """Why a rule matched nothing, with the closest tags, as one line.

    When tags matched but all their points precede ``after_step``, the message quotes the last
    logged step of their points, or ``last_step`` when the series hold no points.

    Example:
        >>> describe_unmatched(Rule(tag="gradients/nrom/*", max=1.0), {"gradients/norm/fc": []})
        "rule 'gradients/nrom/*' matches no scalar tag; closest: gradients/norm/fc"
    """
    matched = [tag for tag in series_by_tag if matches(rule, tag)]
    if matched:
        last = max((s for tag in matched for s, _ in series_by_tag[tag]), default=last_step)
        return (
            f"rule {rule.label!r} matches {len(matched)} tag{'s' if len(matched) > 1 else ''} "
            f"but none has a point at step >= after_step = {rule.after_step} "
            f"(last logged step: {last})"
        )
    close = closest_tags(rule.tag, series_by_tag)
    hint = (
        f"closest: {', '.join(close)}"
        if close
        else (
            f"tags present: {', '.join(sorted(series_by_tag)[:5])}"
            + (", ..." if len(series_by_tag) > 5 else "")
            if series_by_tag
            else "no scalar tags at all"
        )
    )
    return f"rule {rule.label!r} matches no scalar tag; {hint}"
