"""What the diagnosis says: :class:`Finding` records, their ranking and their tables.

Example:
    >>> f = Finding("dead_units", "warning", "net.3", 0, 40, 1.0, "zero_frac 1 of the outputs",
    ...             {"tag": "activations/zero_frac/net.3"}, "lower the learning rate")
    >>> print(findings_markdown([f]).splitlines()[2])
    | warning | dead_units | net.3 | 0–40 | zero_frac 1 of the outputs | lower the learning rate |
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ln_diagnostics._table import markdown_table, text_table

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "error")


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error."""
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Finding:
    """One thing the diagnosis found, over a range of logging steps.

    Attributes:
        kind: what was found, e.g. ``"vanishing_gradients"`` (see :data:`KINDS`).
        severity: ``"info"``, ``"warning"`` or ``"error"``.
        layer: the layer, or a range ``"net.1 … net.19"`` of consecutive layers in forward order,
            or ``""`` for a model-wide finding.
        first_step: the first logging step at which it held.
        last_step: the last logging step at which it held.
        value: the headline number (its meaning depends on ``kind``, see ``message``).
        message: one line saying what was measured.
        evidence: the numbers and tags the finding rests on.
        advice: one line on what to try, with a reference.
    """

    kind: str
    severity: Severity
    layer: str
    first_step: int
    last_step: int
    value: float
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    advice: str = ""

    @property
    def steps(self) -> str:
        """The step range as text: ``"0"`` or ``"0–40"``."""
        if self.first_step == self.last_step:
            return str(self.first_step)
        return f"{self.first_step}–{self.last_step}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers become ``"nan"``, ``"inf"``, ``"-inf"``)."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "layer": self.layer,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "value": _json_value(self.value),
            "message": self.message,
            "evidence": {key: _json_value(value) for key, value in self.evidence.items()},
            "advice": self.advice,
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def rank(findings: Iterable[Finding], order: Sequence[str] = ()) -> list[Finding]:
    """Most severe first, then the earliest, then by ``order`` (the kinds' order), then layer."""
    position = {kind: k for k, kind in enumerate(order)}
    return sorted(
        findings,
        key=lambda f: (
            -severity_rank(f.severity),
            f.first_step,
            position.get(f.kind, len(position)),
            f.layer,
        ),
    )


def worst_severity(findings: Iterable[Finding]) -> str | None:
    """The most severe severity among ``findings``; ``None`` when there are none."""
    ranks = [severity_rank(f.severity) for f in findings]
    return SEVERITIES[max(ranks)] if ranks else None


def findings_markdown(findings: Sequence[Finding]) -> str:
    """The findings as a markdown table (TensorBoard's Text tab renders it).

    Columns: severity, finding, layer, steps, what was measured, what to try.
    """
    return markdown_table(
        ["severity", "finding", "layer", "steps", "what", "what to try"],
        [
            [f.severity, f.kind, f.layer or "(model)", f.steps, f.message, f.advice]
            for f in findings
        ],
    )


def findings_table(findings: Sequence[Finding], *, width: int | None = None) -> str:
    """The findings as an aligned plain-text table for a console, advice under the measurement.

    Args:
        findings: the findings, in the order to print them.
        width: no line is wider than this: the layer and the measurement and advice wrap over
            several lines; ``None``: one line per finding and its advice.
    """
    return text_table(
        ["SEVERITY", "FINDING", "LAYER", "STEPS", "WHAT"],
        [
            [
                f.severity,
                f.kind,
                f.layer or "(model)",
                f.steps,
                f.message + (f"\n-> {f.advice}" if f.advice else ""),
            ]
            for f in findings
        ],
        width=width,
        wrap=(2, 4),
    )
