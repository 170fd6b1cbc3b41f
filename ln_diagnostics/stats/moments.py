"""Device-side power sums of a tensor and their host-side reduction to statistics.

On the device a call reduces a tensor to a handful of numbers without a host sync: shifted power
sums ``Σ(x−K)^p`` for ``p = 1..4`` (``K`` is the tensor's own mean, or the shift of an earlier call
so that sums of several calls add up), the extremes and three counts. On the host the sums of all
calls are turned into mean, std, rms, absmax, kurtosis and fractions, in float64.

A nested tensor (``torch.nested``) is described by its values, the elements of its components:
padding is not part of it (:func:`dense_values`).

Example:
    >>> import torch
    >>> x = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    >>> stats = finalize(Moments.from_row(power_sums(x).tolist(), x.numel()))
    >>> round(stats["mean"], 6), round(stats["zero_frac"], 6), stats["absmax"]
    (0.5, 0.25, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from math import comb
from typing import Literal

import torch
from torch import Tensor

Saturation = Literal["tanh", "sigmoid"]

#: |y| above this counts as saturated for tanh-like outputs; sigmoid-like: y < 1 - T or y > T.
SATURATION_THRESHOLD = 0.97


#: Elements reduced per pass of :func:`power_sums`; larger tensors are reduced chunk by chunk,
#: which bounds the scratch memory at three float32 buffers of this length (1.5 MiB) and keeps
#: them in a core's L2 cache between the passes: on a 32x16x32x32 output the statistics take
#: ~0.9 ms in 128 Ki-element chunks against ~2.1 ms in 1 Mi-element ones, whose passes stream
#: from memory (``benchmarks/overhead.py --kernels``).
CHUNK = 1 << 17


class Scratch:
    """Reusable float32 work buffers for :func:`power_sums`, one set per device.

    On the CPU a fresh temporary of a few MB costs a page fault per 4 KiB every time it is
    allocated; reusing the buffers across calls removes that cost (CUDA's caching allocator
    already reuses its blocks). The buffers grow to the largest chunk seen, at most
    :data:`CHUNK` elements each.
    """

    def __init__(self) -> None:
        self._buffers: dict[torch.device, Tensor] = {}
        self._views: dict[tuple[torch.device, int], tuple[Tensor, Tensor, Tensor]] = {}

    def vector(self, n: int, device: torch.device) -> Tensor | None:
        """One float32 vector of length ``n`` (it overlaps :meth:`views`), or ``None`` when
        ``n`` exceeds the three buffers together."""
        if n > 3 * CHUNK:
            return None
        return self._buffer(n, device)[:n]

    def views(self, n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Three disjoint float32 vectors of length ``n`` on ``device``."""
        views = self._views.get((device, n))
        if views is None:
            if len(self._views) >= 64:  # e.g. variable sequence lengths: keep the cache small
                self._views.clear()
            buffer = self._buffer(3 * n, device)
            views = (buffer[:n], buffer[n : 2 * n], buffer[2 * n : 3 * n])
            self._views[(device, n)] = views
        return views

    def _buffer(self, size: int, device: torch.device) -> Tensor:
        """The device's buffer, grown to at least ``size`` elements (dropping stale views)."""
        buffer = self._buffers.get(device)
        if buffer is None or buffer.numel() < size:
            buffer = torch.empty(size, dtype=torch.float32, device=device)
            self._buffers[device] = buffer
            self._views = {key: v for key, v in self._views.items() if key[0] != device}
        return buffer

    def clear(self) -> None:
        """Free the buffers."""
        self._buffers.clear()
        self._views.clear()


def dense_values(x: Tensor) -> Tensor:
    """The elements a tensor's statistics describe, as an ordinary strided tensor.

    A nested tensor (``torch.nested``, strided or jagged layout; ``nn.TransformerEncoder`` passes
    one between its layers when it drops padded positions) is described by the elements of its
    components, without padding: they are returned as rows of the components' last dimension,
    ``(rows, features)``, or as one flat vector where that dimension is ragged or empty. Any other
    tensor is returned as it is. No host sync, except for a jagged view whose values are not
    contiguous (``torch.nested.narrow``), whose components are found from its device offsets.

    Example:
        >>> import torch
        >>> nested = torch.nested.nested_tensor(
        ...     [torch.ones(1, 2), torch.zeros(3, 2)], layout=torch.jagged)
        >>> dense_values(nested).shape
        torch.Size([4, 2])
    """
    if not x.is_nested:
        return x
    values = x.values() if x.is_contiguous() else None
    if values is None or values.numel() != x.numel():  # a view: gather the components
        values = torch.cat([component.reshape(-1) for component in x.unbind()])
    try:
        features = x.size(-1)
    except RuntimeError:  # the strided layout's ragged dimension has no size
        return values.reshape(-1)
    if not isinstance(features, int) or features == 0:  # the jagged layout's is symbolic
        return values.reshape(-1)
    return values.reshape(-1, features)


def power_sums(
    x: Tensor,
    shift: Tensor | None = None,
    saturation: Saturation | None = None,
    *,
    scratch: Scratch | None = None,
) -> Tensor:
    """Reduce ``x`` to one float32 row laid out as :data:`FIELDS`.

    Args:
        x: a non-empty floating-point tensor of any shape, or a nested tensor (its values,
            :func:`dense_values`); half precision is accumulated in float32. It is detached;
            autograd never sees this computation.
        shift: the ``K`` of the shifted sums (a 0-d tensor). ``None`` uses ``x.mean()``, which
            keeps the sums small and the kurtosis accurate when ``|mean| >> std``.
        saturation: ``"tanh"`` counts ``|y| > 0.97``, ``"sigmoid"`` counts ``y < 0.03 or
            y > 0.97``; ``None`` leaves the count at zero.
        scratch: work buffers to reuse across calls (fresh ones when ``None``).

    Returns:
        A 1-d tensor on ``x``'s device. Non-finite values propagate into the sums and the
        extremes and are counted exactly in ``nonfinite``; the other counts stay exact: NaN and
        ±inf count as non-zero, ±inf as saturated and NaN as not saturated.

    Every step writes float32 values: boolean masks and ``count_nonzero`` are several times
    slower on the CPU, so the zero count sums ``x != 0`` written into a float buffer, the
    saturation count sums ``|y| > T`` written likewise and non-finite values are found as the
    NaNs of ``x * 0``.
    """
    flat = dense_values(x.detach()).reshape(-1)
    if shift is not None:
        k = shift
    else:
        k = flat.mean() if flat.dtype == torch.float32 else flat.mean(dtype=torch.float32)
    n = flat.numel()
    buffers = (scratch or Scratch()).views(min(n, CHUNK), flat.device)
    if n <= CHUNK:
        return torch.stack([k, *_chunk_sums(flat, k, buffers, saturation)])
    chunks = torch.stack(
        [
            torch.stack(_chunk_sums(flat[i : i + CHUNK], k, buffers, saturation))
            for i in range(0, n, CHUNK)
        ]
    )
    total = chunks.sum(0)
    return torch.stack([k, *total[:4], chunks[:, 4].amin(), chunks[:, 5].amax(), *total[6:]])


def _chunk_sums(
    part: Tensor,
    k: Tensor,
    buffers: tuple[Tensor, Tensor, Tensor],
    saturation: Saturation | None,
) -> list[Tensor]:
    """``FIELDS[1:]`` of one chunk, computed in the reused buffers."""
    d, scratch, converted = buffers
    m = part.numel()
    if m < d.numel():
        d, scratch, converted = d[:m], scratch[:m], converted[:m]
    if part.dtype != torch.float32:
        part = converted.copy_(part)
    torch.sub(part, k, out=d)
    torch.mul(d, d, out=scratch)
    # dot products reduce without materialising d³, d⁴ or sign²
    sums = [d.sum(), scratch.sum(), torch.dot(scratch, d), torch.dot(scratch, scratch)]
    sums += torch.aminmax(part)
    torch.ne(part, 0.0, out=d)  # 1.0 where x != 0, NaN included (``sign(NaN)`` is 0)
    sums.append(d.sum())
    if saturation is None:
        sums.append(torch.zeros_like(k))
    else:
        if saturation == "tanh":
            torch.abs(part, out=d)
            threshold = SATURATION_THRESHOLD
        else:
            torch.sub(part, 0.5, out=d).abs_()
            threshold = SATURATION_THRESHOLD - 0.5
        torch.gt(d, threshold, out=d)  # 1.0 above the threshold, ±inf included, NaN not
        sums.append(d.sum())
    torch.mul(part, 0.0, out=scratch)  # 0, or NaN where x is NaN or ±inf
    sums.append(scratch.nan_to_num_(nan=1.0).sum())
    return sums


@dataclass
class Moments:
    """Shifted power sums of one or more calls that share the same shift, on the host.

    The order of the fields is the row layout everywhere: ``n``, then :data:`FIELDS` (the row of
    :func:`power_sums`); the packed per-module slots and the host reduction read it from here.
    """

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
    def from_row(cls, row: Sequence[float], n: int) -> Moments:
        """Build from one call's row as produced by :func:`power_sums`."""
        return cls(n, *row)

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


#: Layout of the row returned by :func:`power_sums`: the fields of :class:`Moments` after ``n``
#: (the counts are float32 sums of 0/1 values: exact below 2**24 elements, relative error ~1e-7
#: beyond).
FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Moments))[1:]
#: The shift ``K`` and the four sums ``Σ(x−K)^p`` in a row of :data:`FIELDS`: what
#: :func:`reshift` re-centres; the fields after them are kept as they are.
CENTRED = slice(FIELDS.index("shift"), FIELDS.index("s4") + 1)


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
    k, *sums = floats[CENTRED]
    d = k - shift
    powers = [float(n), *sums]  # Σ(x−K)^q for q = 0..4
    out = [sum(comb(p, q) * powers[q] * d ** (p - q) for q in range(p + 1)) for p in range(1, 5)]
    return [shift, *out, *floats[CENTRED.stop :]]
