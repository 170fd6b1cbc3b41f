"""Exceptions raised by ln-diagnostics."""

from __future__ import annotations


class ThresholdViolation(RuntimeError):
    """A logged diagnostic left the bounds set by a threshold rule.

    Attributes:
        rule: the rule's name (or its tag pattern when unnamed).
        tag: the scalar tag that violated the rule.
        value: the offending value.
        bound: a human-readable bound, e.g. ``"max 10"`` or ``"max 10, over mean"``.
        step: the global step at which the value was logged.
    """

    def __init__(self, rule: str, tag: str, value: float, bound: str, step: int) -> None:
        self.rule = rule
        self.tag = tag
        self.value = value
        self.bound = bound
        self.step = step
        super().__init__(
            f"threshold rule {rule!r} violated: {tag} = {value:.6g} at step {step} ({bound})"
        )
