"""Threshold rules written from a healthy run: ``ln-diagnostics baseline RUN --out FILE``.

One rule per tag family (``activations/std/*``: one statistic over every layer; each ``health/``
tag on its own), ``over = "all"``, with bounds at a margin around the smallest and largest value
the run logged for that family. The margin depends on what the statistic is:

=================  ===========================================  ================================
kind               statistics                                   bounds around [lo, hi]
=================  ===========================================  ================================
count              ``nonfinite``, ``nonfinite_*``               ``max = 0``, exactly
fraction           ``*_frac`` (in [0, 1])                       [lo - m, hi + m] within [0, 1]
cosine             ``cos``, ``*_cos_*`` (in [-1, 1])            [lo - m, hi + m] within [-1, 1]
log10              ``*_log10``                                  [lo - log10 f, hi + log10 f]
signed             ``mean``, or any family with a value < 0     widened by w = max(hi - lo,
                                                                |lo|, |hi|) on each side
scale              everything else (norms, std, rms, ratios,    [lo / f, hi * f]
                   kurtosis, shift distances)
=================  ===========================================  ================================

``f`` is ``factor`` (default 10: one decade either way in log space) and ``m`` is
``fraction_margin`` (default 0.1, absolute). Every bound contains every logged value, so the run
the file was written from passes it; scalars outside the tag grammar (``train/loss``,
``epoch``) get no rule. A run with a NaN or infinite value, or a non-zero non-finite count, is not
healthy and gets no baseline (:class:`BaselineError`).

This module is pure Python, like the rule parser.

Example:
    >>> series = {"gradients/norm/net.0": [(0, 2.0), (10, 4.0)],
    ...           "gradients/norm/net.2": [(0, 1.0)], "health/nonfinite_grads": [(0, 0.0)]}
    >>> [(b.rule.tag, b.rule.min, b.rule.max) for b in baseline_bounds(folds_of(series))]
    [('gradients/norm/*', 0.1, 40.0), ('health/nonfinite_grads', None, 0.0)]
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ln_diagnostics._validate import check_number
from ln_diagnostics.tags import HEALTH, parse_tag
from ln_diagnostics.thresholds.engine import SeriesFold
from ln_diagnostics.thresholds.rules import Rule

DEFAULT_FACTOR = 10.0
DEFAULT_FRACTION_MARGIN = 0.1


class BaselineError(ValueError):
    """The run cannot give a baseline: no diagnostics in it, or a value that is not healthy."""


@dataclass(frozen=True)
class Bound:
    """One baseline rule and what it was derived from.

    Attributes:
        rule: the rule written to the file.
        kind: ``count``, ``fraction``, ``cosine``, ``log10``, ``signed`` or ``scale``.
        low: the smallest value logged by the family's tags.
        high: the largest.
        tags: how many tags the family has.
        points: how many points they hold together.
    """

    rule: Rule
    kind: str
    low: float
    high: float
    tags: int
    points: int


def _family(tag: str) -> tuple[str, str] | None:
    """The family glob of a tag and its statistic's name; ``None`` outside the tag grammar."""
    parsed = parse_tag(tag)
    if parsed is None:
        return None
    if parsed.group == HEALTH:
        return glob.escape(tag), parsed.stat
    assert parsed.layer is not None  # per-layer groups always carry a layer
    family = tag[: len(tag) - len(parsed.layer)]
    return glob.escape(family) + "*", parsed.stat


def _is_count(stat: str) -> bool:
    return stat == "nonfinite" or stat.startswith("nonfinite_")


def _kind(stat: str, low: float) -> str:
    if _is_count(stat):
        return "count"
    if stat.endswith("_frac"):
        return "fraction"
    if stat == "cos" or "_cos_" in stat or stat.endswith("_cos"):
        return "cosine"
    if stat.endswith("_log10"):
        return "log10"
    if stat == "mean" or low < 0:
        return "signed"
    return "scale"


def _limits(
    kind: str, low: float, high: float, factor: float, margin: float
) -> tuple[float | None, float]:
    if kind == "count":
        return None, 0.0
    if kind in ("fraction", "cosine"):
        floor = 0.0 if kind == "fraction" else -1.0
        # within the statistic's range, yet never inside what was logged
        return max(min(floor, low), low - margin), min(max(1.0, high), high + margin)
    if kind == "log10":
        return low - math.log10(factor), high + math.log10(factor)
    if kind == "signed":
        width = max(high - low, abs(low), abs(high))
        return low - width, high + width
    return low / factor, high * factor


@dataclass
class _Family:
    stat: str
    low: float = math.inf
    high: float = -math.inf
    tags: int = 0
    points: int = 0


def _unhealthy(fold: SeriesFold, count: bool) -> tuple[float, int] | None:
    """A value that makes a series unhealthy, with its step: NaN, infinite, a non-zero count."""
    if fold.nans:
        return math.nan, fold.nan_step
    if not math.isfinite(fold.high) or (count and fold.high != 0):
        return fold.high, fold.high_step
    if not math.isfinite(fold.low) or (count and fold.low != 0):
        return fold.low, fold.low_step
    return None


def baseline_bounds(
    folds: Mapping[str, SeriesFold],
    *,
    factor: float = DEFAULT_FACTOR,
    fraction_margin: float = DEFAULT_FRACTION_MARGIN,
) -> list[Bound]:
    """The baseline rules of one run, one per tag family, in the order families first appear.

    Args:
        folds: the run's series per scalar tag, folded as they were read (the extremes, the
            count and the first NaN are all a baseline needs).
        factor: how far scale quantities may move, as a factor either way (> 1).
        fraction_margin: how far fractions and cosines may move, absolute (>= 0).

    Returns:
        One :class:`Bound` per family.

    Raises:
        ValueError: ``factor`` or ``fraction_margin`` is out of range.
        BaselineError: the run logged no ln-diagnostics scalar, a NaN or infinite value, or a
            non-zero non-finite count (the message names the tag, value and step).
    """
    check_number("factor", factor, minimum=1, strict=True)
    check_number("fraction_margin", fraction_margin, minimum=0)
    families: dict[str, _Family] = {}
    for tag, fold in folds.items():
        found = _family(tag)
        if found is None or not fold.count:
            continue
        pattern, stat = found
        bad = _unhealthy(fold, _is_count(stat))
        if bad is not None:
            raise BaselineError(
                f"{tag} = {bad[0]:g} at step {bad[1]}: a baseline needs a healthy run "
                "(finite values, no non-finite counts)"
            )
        family = families.setdefault(pattern, _Family(stat))
        family.low = min(family.low, fold.low)
        family.high = max(family.high, fold.high)
        family.tags += 1
        family.points += fold.count
    if not families:
        raise BaselineError(
            "no ln-diagnostics scalar (activations/, gradients/, health/, ...) to derive a "
            "baseline from; log the run with LayerDiagnostics"
        )
    bounds = []
    for pattern, family in families.items():
        kind = _kind(family.stat, family.low)
        lower, upper = _limits(kind, family.low, family.high, factor, fraction_margin)
        rule = Rule(tag=pattern, min=lower, max=upper)
        bounds.append(Bound(rule, kind, family.low, family.high, family.tags, family.points))
    return bounds


def folds_of(series_by_tag: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, SeriesFold]:
    """Fold ``(step, value)`` lists, for :func:`baseline_bounds` on series held in memory.

    Example:
        >>> fold = folds_of({"health/loss": [(0, 2.0), (10, 4.0)]})["health/loss"]
        >>> fold.high, fold.count
        (4.0, 2)
    """
    folds = {}
    for tag, points in series_by_tag.items():
        fold = folds[tag] = SeriesFold()
        for step, value in points:
            fold.add(step, value)
    return folds


def _number(value: float) -> str:
    return repr(float(value))  # shortest text that reads back as the same float; valid TOML


def baseline_toml(bounds: Sequence[Bound], *, header: Sequence[str] = ()) -> str:
    """The bounds as a threshold file that :func:`~ln_diagnostics.thresholds.rules.load_rules`
    reads back to the same rules.

    Args:
        bounds: from :func:`baseline_bounds`.
        header: comment lines written first (without ``#``).

    Example:
        >>> bound = baseline_bounds(folds_of({"activations/std/fc": [(0, 1.0)]}))[0]
        >>> print(baseline_toml([bound]))
        [[rule]]
        # scale: logged 1 .. 1 (1 tag, 1 point)
        tag = "activations/std/*"
        min = 0.1
        max = 10.0
        <BLANKLINE>
    """
    lines = [f"# {line}".rstrip() for line in header]
    if lines:
        lines.append("")
    for bound in bounds:
        rule = bound.rule
        lines += [
            "[[rule]]",
            f"# {bound.kind}: logged {bound.low:.6g} .. {bound.high:.6g} "
            f"({bound.tags} tag{'s' if bound.tags != 1 else ''}, "
            f"{bound.points} point{'s' if bound.points != 1 else ''})",
            f"tag = {json.dumps(rule.tag)}",  # a JSON string is a TOML basic string
        ]
        for key, value in (("min", rule.min), ("max", rule.max)):
            if value is not None:
                lines.append(f"{key} = {_number(value)}")
        lines.append("")
    return "\n".join(lines)
