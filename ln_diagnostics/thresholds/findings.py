"""Evaluate ``finding`` rules on a run's diagnosis: a rule fails for each finding of a matching
kind that holds at a step ``>= after_step``; ``"*"`` matches every kind but ``healthy``.

Shared by ``ln-diagnostics check`` (on the diagnosis of the event files) and
:mod:`ln_diagnostics.thresholds.live` (on ``LayerDiagnostics.diagnose()`` at fit end).

Example:
    >>> from ln_diagnostics.diagnose import Finding
    >>> from ln_diagnostics.thresholds.rules import Rule
    >>> found = [Finding("dead_units", "warning", "net.3", 0, 40, 1.0, "all zero")]
    >>> [(r.tag, r.passed) for r in evaluate_findings([Rule(finding="*")], found)]
    [('dead_units net.3', False)]
    >>> [(r.tag, r.passed) for r in evaluate_findings([Rule(finding="nonfinite")], found)]
    [('nonfinite', True)]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ln_diagnostics.diagnose import Finding
from ln_diagnostics.tags import matches
from ln_diagnostics.thresholds.engine import RuleResult
from ln_diagnostics.thresholds.rules import Rule


def finding_matches(rule: Rule, finding: Finding) -> bool:
    """Whether ``finding`` makes the finding rule ``rule`` fail."""
    if finding.kind == "healthy" and rule.finding != "healthy":
        return False
    return matches(finding.kind, [rule.finding]) and finding.last_step >= rule.after_step


def evaluate_findings(rules: Iterable[Rule], findings: Sequence[Finding]) -> list[RuleResult]:
    """One failing result per matching finding, or one passing result when none matches.

    A failing result's ``tag`` is ``"<kind> <layer>"``, its ``value`` the finding's headline
    number and its ``step`` the finding's first step. Rules without ``finding`` are skipped.
    """
    results: list[RuleResult] = []
    for rule in rules:
        if not rule.finding:
            continue
        hits = [f for f in findings if finding_matches(rule, f)]
        results.extend(
            RuleResult(rule, f"{f.kind} {f.layer}".strip(), f.value, f.first_step, False, 1)
            for f in hits
        )
        if not hits:
            last = max((f.last_step for f in findings), default=0)
            results.append(RuleResult(rule, rule.finding, 0.0, last, True, len(findings)))
    return results
