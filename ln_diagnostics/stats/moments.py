"""Device-side power sums of a tensor and their host-side reduction to statistics.

On the device a call reduces a tensor to a handful of numbers without a host sync: shifted power
sums ``Σ(x−K)^p`` for ``p = 1..4`` (``K`` is the tensor's own mean, or the shift of an earlier call
so that sums of several calls add up), the extremes and three counts. On the host the sums of all
calls are turned into mean, std, rms, absmax, kurtosis and fractions, in float64.

Example:
    >>> import torch
    >>> x = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    >>> sums, counts = power_sums(x)
    >>> stats = finalize(Moments.from_rows(sums.tolist(), counts.tolist(), x.numel()))
    >>> round(stats["mean"], 6), round(stats["zero_frac"], 6), stats["absmax"]
    (0.5, 0.25, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb
from typing import Literal

import torch
from torch import Tensor

Saturation = Literal["tanh", "sigmoid"]

#: Layout of the float row returned by :func:`power_sums`.
FLOAT_FIELDS = ("shift", "s1", "s2", "s3", "s4", "min", "max")
#: Layout of the integer row returned by :func:`power_sums`.
COUNT_FIELDS = ("nonzero", "saturated", "nonfinite")

#: |y| above this counts as saturated for tanh-like outputs; sigmoid-like: y < 1 - T or y > T.
SATURATION_THRESHOLD = 0.97


def power_sums(
    x: Tensor, shift: Tensor | None = None, saturation: Saturation | None = None
) -> tuple[Tensor, Tensor]:
    """Reduce ``x`` to a float32 row ``FLOAT_FIELDS`` and an int64 row ``COUNT_FIELDS``.

    Args:
        x: a non-empty floating-point tensor of any shape; half precision is accumulated in
            float32. It is detached; autograd never sees this computation.
        shift: the ``K`` of the shifted sums (a 0-d tensor). ``None`` uses ``x.mean()``, which
            keeps the sums small and the kurtosis accurate when ``|mean| >> std``.
        saturation: ``"tanh"`` counts ``|y| > 0.97``, ``"sigmoid"`` counts ``y < 0.03 or
            y > 0.97``; ``None`` leaves the count at zero.

    Returns:
        ``(floats, counts)``: both 1-d tensors on ``x``'s device. Non-finite values propagate into
        the sums and extremes and are counted in ``counts[2]``.
    """
    with torch.no_grad():
        flat = x.detach().reshape(-1).float()
        k = flat.mean() if shift is None else shift
        d = flat - k
        d2 = d * d
        # dot products reduce without materialising d³ and d⁴
        floats = torch.stack(
            [k, d.sum(), d2.sum(), torch.dot(d2, d), torch.dot(d2, d2), *torch.aminmax(flat)]
        )
        nonzero = torch.count_nonzero(flat)
        if saturation == "tanh":
            saturated = torch.count_nonzero(flat.abs() > SATURATION_THRESHOLD)
        elif saturation == "sigmoid":
            saturated = torch.count_nonzero((flat - 0.5).abs() > SATURATION_THRESHOLD - 0.5)
        else:
            saturated = torch.zeros_like(nonzero)
        nonfinite = torch.count_nonzero(flat * 0.0)
        return floats, torch.stack([nonzero, saturated, nonfinite])


@dataclass
class Moments:
    """Shifted power sums of one or more calls that share the same shift, on the host."""

    n: int
    shift: float
    s1: float
    s2: float
    s3: float
    s4: float
    min: float
    max: float
    nonzero: float
    saturated: float
    nonfinite: float

    @classmethod
    def from_rows(cls, floats: list[float], counts: list[float], n: int) -> Moments:
        """Build from one call's rows as produced by :func:`power_sums`."""
        return cls(n, *floats, *counts)

    def merge(self, other: Moments) -> None:
        """Add another call's sums (computed with the same shift) to these."""
        self.n += other.n
        self.s1 += other.s1
        self.s2 += other.s2
        self.s3 += other.s3
        self.s4 += other.s4
        self.min = _nan_aware(min, self.min, other.min)
        self.max = _nan_aware(max, self.max, other.max)
        self.nonzero += other.nonzero
        self.saturated += other.saturated
        self.nonfinite += other.nonfinite


def _nan_aware(fn, a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else fn(a, b)


def finalize(m: Moments, *, saturation: bool = False) -> dict[str, float]:
    """Turn power sums into the logged statistics (float64 on the host).

    Returns ``mean``, ``std`` (population), ``rms``, ``absmax``, ``kurtosis`` (Pearson's,
    3 for a Gaussian; left out when the variance is zero), ``zero_frac``, ``nonfinite`` and, when
    ``saturation`` is true, ``saturated_frac``.
    """
    n = float(m.n)
    a = m.s1 / n
    e2, e3, e4 = m.s2 / n, m.s3 / n, m.s4 / n
    var = max(e2 - a * a, 0.0)
    mean = m.shift + a
    out = {
        "mean": mean,
        "std": math.sqrt(var),
        "rms": math.sqrt(mean * mean + var) if math.isfinite(var) else var,
        "absmax": _nan_aware(max, abs(m.min), abs(m.max)),
    }
    central4 = e4 - 4.0 * a * e3 + 6.0 * a * a * e2 - 3.0 * a**4
    # A constant tensor has no kurtosis; float32 rounding leaves it a variance near eps²·mean².
    if not var <= 1e-12 * mean * mean:
        out["kurtosis"] = central4 / (var * var)
    out["zero_frac"] = 1.0 - m.nonzero / n
    if saturation:
        out["saturated_frac"] = m.saturated / n
    out["nonfinite"] = m.nonfinite
    return out


def reshift(floats: Sequence[float], n: int, shift: float) -> list[float]:
    """Re-centre one row of shifted power sums to ``shift``, exactly (binomial expansion).

    ``floats`` is a row ``(K, Σ(x−K), Σ(x−K)², Σ(x−K)³, Σ(x−K)⁴, min, max)`` over ``n`` values;
    the result has the same layout with ``K`` replaced by ``shift``.

    Example:
        >>> xs = [1.0, 2.0, 4.0]
        >>> row = [2.0, *(sum((x - 2.0) ** p for x in xs) for p in range(1, 5)), 1.0, 4.0]
        >>> [round(v, 9) for v in reshift(row, 3, 0.0)[1:5]]
        [7.0, 21.0, 73.0, 273.0]
    """
    k, *sums = floats[:5]
    d = k - shift
    powers = [float(n), *sums]  # Σ(x−K)^q for q = 0..4
    out = [sum(comb(p, q) * powers[q] * d ** (p - q) for q in range(p + 1)) for p in range(1, 5)]
    return [shift, *out, *floats[5:]]
