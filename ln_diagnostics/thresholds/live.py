"""Threshold rules judged live, on the values of a run as they are logged.

:class:`LiveEvaluator` is fed each logging step's scalars (``add``) and, once a diagnosis is
available, its findings (``add_findings``). The points go into the same :class:`RunEvaluator`
(rule matching, ``after_step`` windows, :class:`SeriesFold` aggregates) that
``ln-diagnostics check`` fills from the event files, and the findings through the same
:func:`evaluate_findings`, so :meth:`LiveEvaluator.results` is what ``check`` reports on the
same points. On top of that it says *when* a rule is decided, so training can stop early:

* ``over="all"``: on the first point beyond a bound.
* ``over="max"``/``"min"``/``"mean"``: as soon as the verdict can no longer change (a running
  max above ``max``, a running min below ``min``, a NaN, see :func:`is_settled`), otherwise at
  :meth:`LiveEvaluator.finish`; ``over="last"`` at :meth:`LiveEvaluator.finish`.
* ``finding`` rules: when their findings are added.

Each rule is reported once, as a :class:`Violation`: the rule and every tag failing it when it
was decided. Nothing here knows of Lightning; ``DiagnosticThresholds`` finds the sources and
acts on the violations.

Example:
    >>> from ln_diagnostics.thresholds.rules import Rule
    >>> live = LiveEvaluator([Rule(tag="gradients/norm/*", max=10.0)])
    >>> live.add(0, {"gradients/norm/fc": 1.0, "health/loss": 0.5})
    []
    >>> [(v.rule.tag, v.worst.tag, v.worst.step) for v in live.add(1, {"gradients/norm/fc": 12.0})]
    [('gradients/norm/*', 'gradients/norm/fc', 1)]
    >>> [(r.tag, r.value, r.points, r.crossings) for r in live.results()]
    [('gradients/norm/fc', 12.0, 2, 1)]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ln_diagnostics.diagnose import Finding
from ln_diagnostics.errors import ThresholdViolation
from ln_diagnostics.tags import natural_key
from ln_diagnostics.thresholds.engine import (
    RuleIndex,
    RuleResult,
    RunEvaluator,
    _excess,
    is_settled,
    value_passes,
)
from ln_diagnostics.thresholds.findings import evaluate_findings
from ln_diagnostics.thresholds.rules import Rule


@dataclass(frozen=True)
class Violation:
    """A rule decided as failed, with every tag that fails it at that point.

    Attributes:
        rule: the rule.
        failures: the failing results (for a ``finding`` rule, the first failing finding).
    """

    rule: Rule
    failures: tuple[RuleResult, ...]

    @property
    def worst(self) -> RuleResult:
        """The failure to name first: a NaN, else the value furthest beyond a bound."""
        if self.rule.finding:  # no bound to exceed: the one result is the worst
            return self.failures[0]
        return max(
            self.failures,
            key=lambda result: (math.isnan(result.value), _excess(self.rule, result.value)),
        )

    def error(self) -> ThresholdViolation:
        """The exception that reports it: rule, worst tag, value, bound, step, failing tags."""
        worst = self.worst
        over = self.rule.over
        return ThresholdViolation(
            self.rule.label,
            worst.tag,
            worst.value,
            self.rule.bound_text if over == "all" else f"{self.rule.bound_text}, over {over}",
            worst.step,
            failing=sorted((result.tag for result in self.failures), key=natural_key),
        )


def _by_rule(failures: Iterable[RuleResult]) -> list[Violation]:
    """One violation per rule, holding its failures in the order given."""
    by_key: dict[str, list[RuleResult]] = {}
    for result in failures:
        by_key.setdefault(result.rule.key, []).append(result)
    return [Violation(found[0].rule, tuple(found)) for found in by_key.values()]


class LiveEvaluator:
    """Evaluate threshold rules on one run's values as they are logged.

    Args:
        rules: the rules (see :mod:`ln_diagnostics.thresholds.rules`).

    Attributes:
        rules: the rules, in the order given.

    Example:
        >>> from ln_diagnostics.thresholds.rules import Rule
        >>> live = LiveEvaluator([Rule(tag="health/loss", max=1.0, over="mean")])
        >>> live.add(0, {"health/loss": 0.5}) + live.add(1, {"health/loss": 2.0})
        []
        >>> [v.error().bound for v in live.finish()]
        ['max 1, over mean']
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self._finding_rules = tuple(rule for rule in self.rules if rule.finding)
        self._run = RunEvaluator(RuleIndex(self.rules))
        self._findings: list[RuleResult] = []
        self._judged: set[str] = set()  # keys of the finding rules given a diagnosis
        self._reported: set[str] = set()

    def add(self, step: int, scalars: Mapping[str, float]) -> list[Violation]:
        """Fold one logging step in; returns the rules it decides as failed.

        Every point counts, as it does in the event file ``check`` reads: two sources logging
        one tag at one step give two points.
        """
        settled: list[RuleResult] = []
        for tag, raw in scalars.items():
            add = self._run.sink(tag)
            if add is None:
                continue
            value = float(raw)
            add(step, value)
            for rule, fold in self._run.folds_of(tag):
                if rule.key in self._reported or step < rule.after_step:
                    continue
                if value_passes(rule, value):  # a passing point settles nothing
                    continue
                result = fold.result(rule, tag)
                if is_settled(result):
                    settled.append(result)
        return self._report(_by_rule(settled))

    def add_findings(self, findings: Sequence[Finding]) -> list[Violation]:
        """Judge the ``finding`` rules on a diagnosis; returns the rules it fails."""
        self._judged.update(rule.key for rule in self._finding_rules)
        results = evaluate_findings(self._finding_rules, findings)
        self._findings.extend(results)
        return self._report(Violation(r.rule, (r,)) for r in results if not r.passed)

    def finish(self) -> list[Violation]:
        """Decide the aggregates on the whole run; returns the rules that fail."""
        results = self._run.evaluation().results
        return self._report(_by_rule(r for r in results if r.rule.over != "all" and not r.passed))

    def _report(self, violations: Iterable[Violation]) -> list[Violation]:
        new = []
        for violation in violations:
            if violation.rule.key not in self._reported:
                self._reported.add(violation.rule.key)
                new.append(violation)
        return new

    def results(self) -> list[RuleResult]:
        """Every rule's verdict on the points and findings added so far, as ``check`` gives them:
        one result per (rule, matched tag), then the finding rules' results."""
        return [*self._run.evaluation().results, *self._findings]

    def unmatched(self) -> list[tuple[Rule, str]]:
        """The rules that matched nothing so far, each with the reason in one line."""
        found = [
            (rule, f"{self._run.describe_unmatched(rule)} in the logged diagnostics")
            for rule in self._run.evaluation().unmatched
        ]
        found += [
            (rule, f"rule {rule.label!r} was given no diagnosis to judge")
            for rule in self._finding_rules
            if rule.key not in self._judged
        ]
        position = {rule: n for n, rule in reversed(list(enumerate(self.rules)))}
        return sorted(found, key=lambda item: position[item[0]])

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the rules reported, and every tag's folds (a few numbers a
        tag, however long the run)."""
        return {"reported": sorted(self._reported), "folds": self._run.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> list[Rule]:
        """Continue from :meth:`state_dict` (a missing key: nothing of it was kept).

        A ``history`` of points (``{tag: [[step, value], ...]}``, what checkpoints held before
        the folds) is folded in point by point.

        Returns:
            The rules whose earlier points the state does not hold (see
            :meth:`RunEvaluator.load_state_dict`).
        """
        self._run = RunEvaluator(RuleIndex(self.rules))
        self._findings, self._judged = [], set()
        self._reported = set(state.get("reported", ()))
        incomplete = self._run.load_state_dict(state.get("folds", {}))
        for tag, points in state.get("history", {}).items():
            add = self._run.sink(str(tag))
            for step, value in points if add is not None else ():
                add(int(step), float(value))
        return incomplete
