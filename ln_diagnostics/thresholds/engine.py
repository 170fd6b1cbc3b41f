"""Evaluate threshold rules over logged scalar series, one point at a time.

A *series* is the sequence of ``(step, value)`` points of one scalar tag. Each point is folded
into a :class:`SeriesFold` as it is read, so evaluating a log takes memory per tag, never per
point. The engine is pure Python and is shared by :mod:`ln_diagnostics.thresholds.live` (the
``DiagnosticThresholds`` callback's live values) and ``ln-diagnostics check`` (event files), so
both reach the same verdict on the same numbers.

Semantics (independent of the order in which points arrive; "first" means lowest step, and of
points at the same step the one written first):

* A value fails a bound when it is NaN, below ``min`` or above ``max`` (bounds are inclusive;
  ``inf`` fails a bound it lies beyond).
* ``over="all"`` checks every point; the reported value is the *worst* point: the first NaN if
  there is one, otherwise the point furthest beyond (or, when passing, closest to) a bound. The
  result also carries the step of the *first* point that crossed a bound and how many did.
* ``over="last" | "mean" | "max" | "min"`` reduces the series to one value and checks it.
  A NaN anywhere makes ``mean``/``max``/``min`` NaN (so the rule fails); ``last`` looks only at
  the point with the highest step (of several there, the one written last). The reported step
  is that of the last point (``last``, ``mean``), of the extreme (``max``, ``min``) or of the
  first NaN.
* Only points with ``step >= rule.after_step`` count.

Example:
    >>> from ln_diagnostics.thresholds.rules import Rule
    >>> rule = Rule(tag="gradients/norm/*", max=10.0)
    >>> result = evaluate_series(rule, "gradients/norm/fc", [(0, 1.0), (1, 12.0), (2, 30.0)])
    >>> result.passed, result.value, result.step, result.first_step, result.crossings
    (False, 30.0, 2, 1, 2)
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ln_diagnostics.thresholds.rules import Rule

Point = tuple[int, float]
PointSink = Callable[[int, float], None]

_BEFORE_ANY = -(2**63)  # below every int64 step
_AFTER_ANY = 2**63  # above every int64 step
_GLOB_CHARS = frozenset("*?[")


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
        first_step: the step of the first point beyond a bound (``over="all"``) or of the failing
            aggregate; ``None`` when the rule passed.
        crossings: how many points lay beyond a bound (``over="all"``); for an aggregate 1 when
            it failed, else 0.
    """

    rule: Rule
    tag: str
    value: float
    step: int
    passed: bool
    points: int
    first_step: int | None = None
    crossings: int = 0

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
    distances = []
    if rule.min is not None:
        distances.append(rule.min - value)
    if rule.max is not None:
        distances.append(value - rule.max)
    return max(distances)


def _band_of(low: float | None, high: float | None) -> tuple[float, float]:
    return (-math.inf if low is None else low, math.inf if high is None else high)


class _Band:
    """Counts the points outside ``[low, high]`` (NaN included) and the first one's step."""

    __slots__ = ("crossings", "first_step", "high", "low")

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.crossings, self.first_step = 0, _AFTER_ANY


class SeriesFold:
    """The running aggregate of one series: every rule's verdict without keeping the points.

    Tracks the count, sum, extremes, last point and first NaN of the points at
    ``step >= after_step``, and for each band (the bounds of an ``over="all"`` rule) how many
    points crossed it. :meth:`add` is the hot path of reading a log: a few comparisons a point.

    Args:
        after_step: points at a lower step are not counted (only their last step is kept, for
            messages); by default every point counts.

    Example:
        >>> fold = SeriesFold()
        >>> for step, value in [(0, 3.0), (1, float("nan")), (2, 5.0)]:
        ...     fold.add(step, value)
        >>> fold.count, fold.nans, fold.high, fold.last_step, fold.mean
        (3, 1, 5.0, 2, nan)
    """

    __slots__ = (
        "after_step",
        "bands",
        "count",
        "early_step",
        "high",
        "high_step",
        "last",
        "last_step",
        "low",
        "low_step",
        "nan_step",
        "nans",
        "total",
    )

    def __init__(self, after_step: int = _BEFORE_ANY) -> None:
        self.after_step = after_step
        self.count = self.nans = 0
        self.total = 0.0
        self.low, self.low_step = math.inf, _AFTER_ANY
        self.high, self.high_step = -math.inf, _AFTER_ANY
        self.last, self.last_step = math.nan, _BEFORE_ANY
        self.nan_step = _AFTER_ANY
        self.early_step: int | None = None
        self.bands: tuple[_Band, ...] = ()

    def watch(self, low: float | None, high: float | None) -> None:
        """Also count the points outside ``[low, high]`` (``None``: unbounded on that side)."""
        band = _band_of(low, high)
        if all((b.low, b.high) != band for b in self.bands):
            self.bands = (*self.bands, _Band(*band))

    def add(self, step: int, value: float) -> None:
        """Fold one point in."""
        if step < self.after_step:
            if self.early_step is None or step > self.early_step:
                self.early_step = step
            return
        self.count += 1
        if step >= self.last_step:
            self.last_step, self.last = step, value
        if value != value:  # NaN
            self.nans += 1
            if step < self.nan_step:
                self.nan_step = step
        else:
            self.total += value
            if value >= self.high and (value > self.high or step < self.high_step):
                self.high, self.high_step = value, step
            if value <= self.low and (value < self.low or step < self.low_step):
                self.low, self.low_step = value, step
        for band in self.bands:
            if not band.low <= value <= band.high:
                band.crossings += 1
                if step < band.first_step:
                    band.first_step = step

    def state_dict(self) -> dict[str, Any]:
        """Everything folded so far, as plain numbers (for a checkpoint)."""
        state: dict[str, Any] = {name: getattr(self, name) for name in _FOLD_FIELDS}
        state["bands"] = [[b.low, b.high, b.crossings, b.first_step] for b in self.bands]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> set[tuple[float, float]]:
        """Continue from :meth:`state_dict`; the bands watched here that ``state`` lacks (their
        crossings count from now) are returned."""
        for name in _FOLD_FIELDS:
            setattr(self, name, state[name])
        saved = {(low, high): (crossings, first) for low, high, crossings, first in state["bands"]}
        missing = set()
        for band in self.bands:
            counts = saved.get((band.low, band.high))
            if counts is None:
                missing.add((band.low, band.high))
            else:
                band.crossings, band.first_step = counts
        return missing

    @property
    def mean(self) -> float:
        """The mean of the counted points (NaN when one is NaN or none was counted)."""
        return self.total / self.count if self.count and not self.nans else math.nan

    @property
    def latest_step(self) -> int | None:
        """The highest step seen, counted or not (``None`` before any point)."""
        return self.last_step if self.count else self.early_step

    def result(self, rule: Rule, tag: str) -> RuleResult:
        """The verdict of ``rule`` on the points folded so far (at least one).

        Raises:
            ValueError: no point was counted, or ``rule`` is ``over="all"`` and its bounds were
                not given to :meth:`watch`.
        """
        if not self.count:
            raise ValueError(f"no points for tag {tag!r} at step >= {self.after_step}")
        if rule.over == "all":
            step, value = self._worst(rule)
            band = self._band(rule)
            passed = value_passes(rule, value)
            first = band.first_step if band.crossings else None
            return RuleResult(rule, tag, value, step, passed, self.count, first, band.crossings)
        if rule.over == "last":
            step, value = self.last_step, self.last
        elif self.nans:
            step, value = self.nan_step, math.nan
        elif rule.over == "max":
            step, value = self.high_step, self.high
        elif rule.over == "min":
            step, value = self.low_step, self.low
        else:  # mean
            step, value = self.last_step, self.mean
        passed = value_passes(rule, value)
        return RuleResult(
            rule, tag, value, step, passed, self.count, None if passed else step, int(not passed)
        )

    def _worst(self, rule: Rule) -> Point:
        if self.nans:
            return self.nan_step, math.nan
        low, high = _excess(rule, self.low), _excess(rule, self.high)
        if high > low or (high == low and self.high_step < self.low_step):
            return self.high_step, self.high
        return self.low_step, self.low

    def _band(self, rule: Rule) -> _Band:
        band = _band_of(rule.min, rule.max)
        for candidate in self.bands:
            if (candidate.low, candidate.high) == band:
                return candidate
        raise ValueError(f"rule {rule.label!r}: its bounds were not watched by this fold")


_FOLD_FIELDS = tuple(name for name in SeriesFold.__slots__ if name != "bands")


def _fold_for(rule: Rule) -> SeriesFold:
    fold = SeriesFold(rule.after_step)
    if rule.over == "all":
        fold.watch(rule.min, rule.max)
    return fold


def evaluate_series(rule: Rule, tag: str, points: Iterable[Point]) -> RuleResult:
    """Evaluate one rule on one tag's points.

    Args:
        rule: the rule.
        tag: the tag, copied into the result.
        points: ``(step, value)`` pairs in any order; at least one at ``step >= after_step``.

    Returns:
        The verdict with the worst or aggregate value.

    Raises:
        ValueError: no point at ``step >= after_step``.

    Example:
        >>> rule = Rule(tag="health/loss", max=1.0, over="mean")
        >>> evaluate_series(rule, "health/loss", [(0, 0.5), (1, 2.0)]).value
        1.25
    """
    fold = _fold_for(rule)
    for step, value in points:
        fold.add(step, value)
    return fold.result(rule, tag)


def is_settled(result: RuleResult) -> bool:
    """Whether a failure on a partial series will still be a failure once more points arrive.

    Always true for ``over="all"``; for aggregates only when the aggregate can no longer come
    back within bounds: a NaN in ``mean``/``max``/``min``, a running ``max`` above ``max``, a
    running ``min`` below ``min``. :mod:`ln_diagnostics.thresholds.live` uses this to stop a
    run early without ever disagreeing with ``ln-diagnostics check`` on the finished run.
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


class RuleIndex:
    """Rules compiled for matching many tags: exact tags by lookup, globs by compiled regex.

    Matching a tag costs one dictionary lookup plus one regex match per glob rule, so a file of
    thousands of exact-tag rules is matched in time linear in the number of rules and tags.

    Example:
        >>> index = RuleIndex([Rule(tag="health/loss", max=1.0), Rule(tag="health/*", min=0.0)])
        >>> index.indices_for("health/loss"), index.indices_for("gradients/norm/fc")
        ([0, 1], [])
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        # finding rules are judged on the diagnosis (thresholds.findings), not on a tag
        self.rules = tuple(rule for rule in rules if not rule.finding)
        self._exact: dict[str, list[int]] = {}
        self._globs: list[tuple[int, Callable[[str], object]]] = []
        for index, rule in enumerate(self.rules):
            if _GLOB_CHARS.isdisjoint(rule.tag):
                self._exact.setdefault(rule.tag, []).append(index)
            else:
                self._globs.append((index, re.compile(fnmatch.translate(rule.tag)).match))

    def indices_for(self, tag: str) -> list[int]:
        """The positions of the rules matching ``tag``, in rule order."""
        found = [index for index, match in self._globs if match(tag)]
        exact = self._exact.get(tag)
        return sorted(found + exact) if exact else found


class RunEvaluator:
    """Streaming evaluation of a set of rules on one run.

    The reader asks :meth:`sink` once per tag it meets and feeds that tag's points to the
    function it gets (``None``: no rule needs the tag, its points are not even decoded);
    :meth:`evaluation` gives the verdicts. Memory grows with the number of matched tags, not
    with the number of points.

    Example:
        >>> run = RunEvaluator(RuleIndex([Rule(tag="gradients/norm/*", max=10.0)]))
        >>> add = run.sink("gradients/norm/fc")
        >>> add(0, 1.0); add(1, 12.0)
        >>> run.sink("health/loss") is None
        True
        >>> [(r.tag, r.passed, r.first_step) for r in run.evaluation().results]
        [('gradients/norm/fc', False, 1)]
    """

    def __init__(self, index: RuleIndex) -> None:
        self._index = index
        self._matched: list[list[tuple[str, SeriesFold]]] = [[] for _ in index.rules]
        self.tags: dict[str, PointSink | None] = {}  # every tag offered -> its sink, first-seen
        self._folds: dict[str, tuple[tuple[Rule, SeriesFold], ...]] = {}
        self._positions: dict[Rule, int] | None = None

    def sink(self, tag: str) -> PointSink | None:
        """Where the points of ``tag`` go, or ``None`` when no rule matches it (the same answer
        on every call for one tag)."""
        if tag in self.tags:
            return self.tags[tag]
        folds: dict[int, SeriesFold] = {}
        pairs: list[tuple[Rule, SeriesFold]] = []
        for position in self._index.indices_for(tag):
            rule = self._index.rules[position]
            fold = folds.get(rule.after_step)
            if fold is None:
                fold = folds[rule.after_step] = SeriesFold(rule.after_step)
            if rule.over == "all":
                fold.watch(rule.min, rule.max)
            self._matched[position].append((tag, fold))
            pairs.append((rule, fold))
        self._folds[tag] = tuple(pairs)
        self.tags[tag] = sink = _sink_of(tuple(folds.values()))
        return sink

    def folds_of(self, tag: str) -> tuple[tuple[Rule, SeriesFold], ...]:
        """Each rule matching ``tag`` (one already offered to :meth:`sink`) with the fold of its
        points, in rule order: ``fold.result(rule, tag)`` is the rule's verdict so far."""
        return self._folds[tag]

    def state_dict(self) -> dict[str, list[dict[str, Any]]]:
        """Every tag offered, in first-seen order, with the state of its folds."""
        return {
            tag: [fold.state_dict() for fold in {id(f): f for _, f in pairs}.values()]
            for tag, pairs in self._folds.items()
        }

    def load_state_dict(self, state: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Rule]:
        """Restore the tags and folds of :meth:`state_dict` into an evaluator that has seen none
        of those tags.

        Returns:
            The rules, in rule order, whose earlier points the state does not hold (the rules
            changed since it was written): their verdicts count only the points added from now.
        """
        incomplete: set[Rule] = set()
        for tag, saved in state.items():
            if tag in self.tags:
                raise ValueError(f"tag {tag!r} was already offered to this evaluator")
            self.sink(tag)
            by_window = {fold["after_step"]: fold for fold in saved}
            lost: dict[int, set[tuple[float, float]] | None] = {}  # id(fold) -> bands not restored
            for rule, fold in self._folds[tag]:
                if id(fold) not in lost:
                    kept = by_window.get(fold.after_step)
                    lost[id(fold)] = None if kept is None else fold.load_state_dict(kept)
                missing = lost[id(fold)]
                band = _band_of(rule.min, rule.max) if rule.over == "all" else None
                if missing is None or band in missing:
                    incomplete.add(rule)
        return [rule for rule in self._index.rules if rule in incomplete]

    def evaluation(self) -> Evaluation:
        """One result per (rule, tag with a counted point), in rule order then tag order."""
        results: list[RuleResult] = []
        unmatched: list[Rule] = []
        for rule, matched in zip(self._index.rules, self._matched, strict=True):
            counted = sorted(((tag, fold) for tag, fold in matched if fold.count), key=_by_tag)
            if not counted:
                unmatched.append(rule)
            results.extend(fold.result(rule, tag) for tag, fold in counted)
        return Evaluation(tuple(results), tuple(unmatched))

    def describe_unmatched(self, rule: Rule) -> str:
        """Why ``rule`` (one of this run's) matched nothing, as one line (see the function)."""
        if self._positions is None:
            self._positions = {rule: n for n, rule in reversed(list(enumerate(self._index.rules)))}
        matched = self._matched[self._positions[rule]]
        steps = [fold.latest_step for _, fold in matched if fold.latest_step is not None]
        return _describe(rule, self.tags, [tag for tag, _ in matched], max(steps, default=None))


def _sink_of(folds: tuple[SeriesFold, ...]) -> PointSink | None:
    """One function that adds a point to every fold (``None`` for none)."""
    if not folds:
        return None
    if len(folds) == 1:
        return folds[0].add
    adds = tuple(fold.add for fold in folds)

    def fan_out(step: int, value: float) -> None:
        for add in adds:
            add(step, value)

    return fan_out


def _by_tag(item: tuple[str, SeriesFold]) -> str:
    return item[0]


def evaluate(rules: Iterable[Rule], series_by_tag: Mapping[str, Iterable[Point]]) -> Evaluation:
    """Evaluate every rule on every matching tag of one run.

    Example:
        >>> rules = [Rule(tag="gradients/norm/*", max=10.0), Rule(tag="typo/*", max=1.0)]
        >>> ev = evaluate(rules, {"gradients/norm/fc": [(0, 1.0)]})
        >>> [r.passed for r in ev.results], [r.tag for r in ev.unmatched]
        ([True], ['typo/*'])
    """
    run = RunEvaluator(RuleIndex(rules))
    for tag, points in series_by_tag.items():
        add = run.sink(tag)
        if add is not None:
            for step, value in points:
                add(int(step), float(value))
    return run.evaluation()


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


def _describe(rule: Rule, tags: Iterable[str], matched: Sequence[str], last: int | None) -> str:
    if matched:
        return (
            f"rule {rule.label!r} matches {len(matched)} tag{'s' if len(matched) > 1 else ''} "
            f"but none has a point at step >= after_step = {rule.after_step} "
            f"(last logged step: {last})"
        )
    present = sorted(tags)
    close = closest_tags(rule.tag, present)
    hint = (
        f"closest: {', '.join(close)}"
        if close
        else (
            f"tags present: {', '.join(present[:5])}" + (", ..." if len(present) > 5 else "")
            if present
            else "no scalar tags at all"
        )
    )
    return f"rule {rule.label!r} matches no scalar tag; {hint}"
