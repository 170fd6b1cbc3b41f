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
        index, _, converted = (scratch or Scratch()).views(min(n, CHUNK), flat.device)
        index = index.view(torch.int32)
        edges_here = edges.to(flat.device)  # a layer on another device than the parameters
        counts: Tensor | None = None
        parts = []
        for start in range(0, n, CHUNK):
            part = flat[start : start + CHUNK]
            m = part.numel()
            if part.dtype != torch.float32:
                part = converted[:m].copy_(part)
            torch.bucketize(part, edges_here, out_int32=True, out=index[:m])
            chunk = bucket_counts(index[:m], bins, sync_free=flat.device.type != "cpu")
            counts = chunk if counts is None else counts.add_(chunk)
            parts.append(torch.stack([*torch.aminmax(part), part.sum(), torch.dot(part, part)]))
        if len(parts) == 1:
            return parts[0], counts
        rows = torch.stack(parts)
        floats = torch.stack([rows[:, 0].amin(), rows[:, 1].amax(), *rows[:, 2:].sum(0)])
        return floats, counts
