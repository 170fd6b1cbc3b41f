"""Plain records handed from the collector to writers and to other callbacks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class LoggedScalars(NamedTuple):
    """The scalars of one logging step, keyed by tag (see ``ln_diagnostics.tags``).

    ``LayerDiagnostics.last_logged`` holds the most recent one; ``DiagnosticThresholds`` reads it
    to check live values.
    """

    step: int
    scalars: Mapping[str, float]


class Histogram(NamedTuple):
    """One histogram in TensorBoard's terms: right bucket edges and counts (empty ends trimmed)."""

    min: float
    max: float
    num: float
    sum: float
    sum_squares: float
    bucket_limit: list[float]
    bucket: list[float]


class StepReport(NamedTuple):
    """Everything one logging step produced, already on the host."""

    step: int
    scalars: dict[str, float]
    histograms: dict[str, Histogram]
