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

import torch
from torch import Tensor

_DECADES = 8
_PER_DECADE = 10


def bucket_edges(device: torch.device) -> Tensor:
    """Right edges of the buckets (ascending, float32); one more bucket lies above the last."""
    exponents = torch.arange(-_DECADES * _PER_DECADE, _DECADES * _PER_DECADE + 1) / _PER_DECADE
    positive = torch.pow(10.0, exponents.double())
    edges = torch.cat([-positive.flip(0), torch.zeros(1, dtype=torch.float64), positive])
    return edges.float().to(device)


def histogram(x: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(floats, counts)``: ``[min, max, sum, sum of squares]`` and per-bucket counts.

    Bucket ``i`` holds values in ``(edges[i-1], edges[i]]``; the last bucket holds everything above
    ``edges[-1]``. ``len(counts) == len(edges) + 1``.
    """
    with torch.no_grad():
        flat = x.detach().reshape(-1).float()
        index = torch.bucketize(flat, edges)
        counts = torch.bincount(index, minlength=edges.numel() + 1)
        floats = torch.stack([*torch.aminmax(flat), flat.sum(), (flat * flat).sum()])
        return floats, counts
