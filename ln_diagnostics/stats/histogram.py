"""Fixed-bucket histograms computed on the device, so no host sync is needed to pick a range.

Buckets are symmetric and logarithmic: ``±10^(k/10)`` for magnitudes from 1e-8 to 1e8 plus zero,
fine enough for TensorBoard's histogram and distribution dashboards, which re-bin anyway.

Example:
    >>> import torch
    >>> edges = bucket_edges(torch.device("cpu"))
    >>> floats, counts = histogram(torch.tensor([0.5, -2.0, 0.0]), edges)
    >>> int(counts.sum()), floats.tolist()[:2]
    (3, [-2.0, 0.5])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ln_diagnostics.stats.moments import CHUNK, Scratch

_DECADES = 8
_PER_DECADE = 10


def bucket_edges(device: torch.device) -> Tensor:
    """Right edges of the buckets (ascending, float32); one more bucket lies above the last."""
    exponents = torch.arange(-_DECADES * _PER_DECADE, _DECADES * _PER_DECADE + 1) / _PER_DECADE
    positive = torch.pow(10.0, exponents.double())
    edges = torch.cat([-positive.flip(0), torch.zeros(1, dtype=torch.float64), positive])
    return edges.float().to(device)


def bucket_index(x: Tensor, edges: Tensor, *, out: Tensor, work: Tensor) -> Tensor:
    """``torch.bucketize(x, edges, out_int32=True, out=out)`` for the edges of
    :func:`bucket_edges`, several times faster on the CPU, whose ``bucketize`` is a binary search
    per element (~90 ns each).

    The bucket follows from ``10·log10|x|`` (for ``x > 0`` the ceiling past the zero bucket, for
    ``x < 0`` the mirror image); one comparison with each of the bucket's edges then moves a value
    that float32 rounding put next door (and ``+0``) into its bucket, so the result is exactly
    ``bucketize``'s, NaN in the last bucket included.

    Args:
        x: a float32 vector.
        edges: ``bucket_edges(x.device)``.
        out: an int32 vector as long as ``x``, for the result.
        work: a float32 vector as long as ``x``, overwritten.
    """
    steps = _DECADES * _PER_DECADE  # edges on each side of zero: 10^(k/10), k = -steps..steps
    zero = edges.numel() // 2  # the position of the zero edge
    torch.abs(x, out=work)
    work.log10_().mul_(_PER_DECADE).clamp_(-steps - 0.5, steps + 0.5).add_(steps + 1)
    torch.copysign(work, x, out=work)
    work.add_(zero).ceil_().nan_to_num_(nan=float(edges.numel()))
    out.copy_(work)
    nan = torch.full((1,), math.nan, dtype=edges.dtype, device=edges.device)
    torch.index_select(torch.cat([edges, nan]), 0, out, out=work)  # the bucket's upper edge
    out.add_(x > work)
    torch.index_select(torch.cat([nan, edges]), 0, out, out=work)  # its lower edge
    out.add_(x <= work, alpha=-1)
    return out


def bucket_counts(index: Tensor, bins: int, *, sync_free: bool) -> Tensor:
    """How often each of ``0 .. bins-1`` occurs in ``index`` (int64 counts).

    ``torch.bincount`` is the faster kernel on the CPU, but on CUDA it reads the index's extremes
    back to the host to size its output, a synchronisation per call; ``sync_free`` adds ones
    into a fixed-size vector with ``index_add_`` instead.
    """
    if not sync_free:
        return torch.bincount(index, minlength=bins)
    ones = torch.ones((), dtype=torch.int64, device=index.device).expand(index.numel())
    return torch.zeros(bins, dtype=torch.int64, device=index.device).index_add_(0, index, ones)


def histogram(x: Tensor, edges: Tensor, *, scratch: Scratch | None = None) -> tuple[Tensor, Tensor]:
    """Return ``(floats, counts)``: ``[min, max, sum, sum of squares]`` and per-bucket counts.

    Bucket ``i`` holds values in ``(edges[i-1], edges[i]]``; the last bucket holds everything above
    ``edges[-1]``. ``len(counts) == len(edges) + 1``. The bucket indices (int32) and the float32
    copy of other dtypes go into ``scratch``'s buffers, :data:`CHUNK` elements at a time: fresh
    temporaries of the tensor's size would grow a CPU process's heap on every logging step.
    """
    with torch.no_grad():
        flat = x.detach().reshape(-1)
        n = flat.numel()
        bins = edges.numel() + 1
        if n == 0:  # e.g. a zero-size parameter: no values, no counts
            empty = torch.tensor([math.inf, -math.inf, 0.0, 0.0], device=flat.device)
            return empty, torch.zeros(bins, dtype=torch.int64, device=flat.device)
        index, work, converted = (scratch or Scratch()).views(min(n, CHUNK), flat.device)
        index = index.view(torch.int32)
        edges_here = edges.to(flat.device)  # a layer on another device than the parameters
        counts: Tensor | None = None
        parts = []
        for start in range(0, n, CHUNK):
            part = flat[start : start + CHUNK]
            m = part.numel()
            if part.dtype != torch.float32:
                part = converted[:m].copy_(part)
            bucket_index(part, edges_here, out=index[:m], work=work[:m])
            chunk = bucket_counts(index[:m], bins, sync_free=flat.device.type != "cpu")
            counts = chunk if counts is None else counts.add_(chunk)
            parts.append(torch.stack([*torch.aminmax(part), part.sum(), torch.dot(part, part)]))
        if len(parts) == 1:
            return parts[0], counts
        rows = torch.stack(parts)
        floats = torch.stack([rows[:, 0].amin(), rows[:, 1].amax(), *rows[:, 2:].sum(0)])
        return floats, counts
