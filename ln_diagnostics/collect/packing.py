"""A logging step's device tensors in fixed per-module slots: one vector, collective and copy.

Every rank builds a vector of the same length (it depends only on the number of watched modules
and parameters, and on whether the step draws histograms), so under DDP or FSDP one
``all_gather`` moves every rank's statistics without any chance of a shape mismatch, even when a
module ran on one rank and not on another. The host then turns each rank's slots back into rows
and merges them.

The layout is written once, here: :class:`Layout` lists the blocks of the vector in order and the
column names of their rows (:data:`ACTIVATION`, :data:`BACKPROP`, :data:`NORMS`,
:data:`HISTOGRAM`); :func:`pack` and :func:`split` both follow it. In float64: first the rank's
:class:`Status`; per module, activations (``n`` and the row of
:func:`~ln_diagnostics.stats.moments.power_sums`, the fields of
:class:`~ln_diagnostics.stats.moments.Moments`) and backprop ``Σ‖g‖², calls``; per parameter
``grad norm, param norm, update norm`` of the part of the tensor this rank counts (−1 when it
counts none, see :func:`counted_part`); per step since the previous logging step, the sum of
squared gradient norms and the number of gradient tensors read; on histogram steps, activation
and gradient histograms ``min, max, sum, sum², counts…``.

Example:
    >>> import torch
    >>> layout = Layout(modules=2, params=1, hist_buckets=0)
    >>> parts = {name: torch.zeros(rows, width) for name, rows, width in layout.blocks()}
    >>> vector = pack(layout, parts)
    >>> blocks = split(vector.tolist(), layout)
    >>> len(vector), len(blocks["act"]), len(blocks["act"][0])
    (30, 2, 11)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch
import torch.distributed as dist
from torch import Tensor

from ln_diagnostics.stats.moments import FIELDS

#: Columns of a module's activation slot: the number of values, then the power-sum row.
ACTIVATION: tuple[str, ...] = ("n", *FIELDS)
#: Columns of a module's backprop slot: sum of squared output-gradient norms, number of calls.
BACKPROP: tuple[str, ...] = ("squares", "calls")
#: Columns of a parameter's slot: norms of its gradient, of itself and of its update.
NORMS: tuple[str, ...] = ("grad", "param", "update")
#: Columns of a step's slot in the window since the previous logging step: the sum of squared
#: gradient norms this rank counted, and how many gradient tensors it read (−1: reading failed).
WINDOW: tuple[str, ...] = ("squares", "tensors")
#: Leading columns of a histogram slot; the bucket counts follow.
HISTOGRAM: tuple[str, ...] = ("min", "max", "sum", "sum_squares")
_INF = math.inf
#: Activation columns that merge a module's calls by a reduction (initial value, reduction)
#: instead of a sum; every call of a module after its first uses the first call's shift.
_REDUCED = {"shift": (0.0, "amax"), "min": (_INF, "amin"), "max": (-_INF, "amax")}


class Status(IntEnum):
    """How much of a logging step a rank measured; the host acts on the worst rank's status."""

    OK = 0
    GRADIENTS_LOST = 1  # reading gradients or parameters failed: no norms, ratios or histograms
    STEP_LOST = 2  # packing failed: the rank sends an empty vector of the same layout


@dataclass(frozen=True)
class Layout:
    """The blocks of one step's packed vector, in order; every rank builds the same one.

    Args:
        modules: watched modules (one row each in the per-module blocks).
        params: parameters (one row each in the ``norms`` block).
        hist_buckets: histogram buckets; 0 when the step draws no histograms.
        window: steps since the previous logging step, this one included (one row each in the
            ``window`` block).
    """

    modules: int
    params: int
    hist_buckets: int
    window: int = 0

    @property
    def hist_width(self) -> int:
        return len(HISTOGRAM) + self.hist_buckets

    def blocks(self) -> list[tuple[str, int, int]]:
        """``(name, rows, width)`` of every block, in the order of the vector."""
        m = self.modules
        blocks = [
            ("status", 1, 1),
            ("act", m, len(ACTIVATION)),
            ("bp", m, len(BACKPROP)),
            ("norms", self.params, len(NORMS)),
            ("window", self.window, len(WINDOW)),
        ]
        if self.hist_buckets:
            blocks += [("act_hist", m, self.hist_width), ("grad_hist", m, self.hist_width)]
        return blocks

    def __len__(self) -> int:
        return sum(rows * width for _, rows, width in self.blocks())


def _rows(rows: Sequence[Tensor], device: torch.device) -> Tensor:
    if any(r.device != device for r in rows):  # a model spread over several devices
        rows = [r.to(device) for r in rows]
    return torch.stack(rows).to(torch.float64)


def _index(rows: Sequence[tuple[int, ...]], device: torch.device) -> Tensor:
    return torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)


def pack_activations(
    m: int,
    rows: Sequence[tuple[int, int, Tensor]],
    device: torch.device,
) -> Tensor:
    """``[m, len(ACTIVATION)]`` from per-call ``(module, numel, power_sums row)`` entries."""
    out = torch.zeros(m, len(ACTIVATION), dtype=torch.float64, device=device)
    if rows:
        idx = _index(rows, device)
        n = torch.tensor([float(r[1]) for r in rows], dtype=torch.float64, device=device)
        calls = torch.cat([n[:, None], _rows([r[2] for r in rows], device)], dim=1)
        out.index_add_(0, idx, calls)
    for name, (initial, how) in _REDUCED.items():
        k = ACTIVATION.index(name)
        column = torch.full((m,), initial, dtype=torch.float64, device=device)
        if rows:
            column.scatter_reduce_(0, idx, calls[:, k], how, include_self=False)
        out[:, k] = column
    return out


def pack_backprop(m: int, rows: Sequence[tuple[int, Tensor]], device: torch.device) -> Tensor:
    """``[m, len(BACKPROP)]``: sum of squared output-gradient norms and number of calls."""
    out = torch.zeros(m, len(BACKPROP), dtype=torch.float64, device=device)
    if rows:
        norms = _rows([r[1] for r in rows], device)
        out.index_add_(
            0, _index(rows, device), torch.stack([norms * norms, torch.ones_like(norms)], 1)
        )
    return out


def pack_norms(
    p: int, present: Sequence[int], norms: Sequence[Tensor], device: torch.device
) -> Tensor:
    """``[p]``: the norms at positions ``present``, −1 elsewhere."""
    out = torch.full((p,), -1.0, dtype=torch.float64, device=device)
    if present:
        idx = torch.tensor(list(present), dtype=torch.long, device=device)
        out.index_copy_(0, idx, _rows(list(norms), device))
    return out


def pack_histograms(
    m: int, rows: Sequence[tuple[int, Tensor, Tensor]], buckets: int, device: torch.device
) -> Tensor:
    """``[m, len(HISTOGRAM) + buckets]``: :data:`HISTOGRAM`, then the bucket counts, merged per
    module."""
    sums = torch.zeros(m, 2 + buckets, dtype=torch.float64, device=device)
    low = torch.full((m,), _INF, dtype=torch.float64, device=device)
    high = torch.full((m,), -_INF, dtype=torch.float64, device=device)
    if rows:
        idx = _index(rows, device)
        floats = _rows([r[1] for r in rows], device)
        counts = _rows([r[2] for r in rows], device)
        sums.index_add_(0, idx, torch.cat([floats[:, 2:4], counts], dim=1))
        low.scatter_reduce_(0, idx, floats[:, 0], "amin")
        high.scatter_reduce_(0, idx, floats[:, 1], "amax")
    return torch.cat([low[:, None], high[:, None], sums], dim=1)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks of the default process group (1 without one)."""
    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if _initialized() else 0


def counted_part(t: Tensor) -> Tensor | None:
    """The part of ``t`` that this rank counts toward statistics of the whole tensor.

    Over all ranks every element is counted exactly once, so sums of squares and histogram
    counts of the parts add up on the host to those of the full tensor, and nothing gathers it:

    * a ``DTensor`` (FSDP2's ``fully_shard``, tensor parallelism): its local shard; where a mesh
      dimension is ``Replicate``, only the rank at coordinate 0 of that dimension counts it;
    * a plain tensor, replicated on every rank as under DDP (whose gradients are already
      averaged): rank 0 counts it, the others return ``None``.

    Raises:
        ValueError: a ``Partial`` placement, whose local values are addends of a pending
            reduction rather than elements of the tensor.

    Example:
        >>> import torch
        >>> counted_part(torch.ones(3)).tolist()  # without a process group this is rank 0
        [1.0, 1.0, 1.0]
    """
    dtensor = sys.modules.get("torch.distributed.tensor")  # not imported: no DTensor exists
    if dtensor is None or not isinstance(t, dtensor.DTensor):
        return t if rank() == 0 else None
    coordinate = t.device_mesh.get_coordinate()
    if coordinate is None:  # this rank is outside the tensor's mesh
        return None
    for placement, position in zip(t.placements, coordinate, strict=True):
        if placement.is_partial():
            raise ValueError(
                f"a DTensor with placements {t.placements} holds partial sums; statistics need "
                "Shard or Replicate placements"
            )
        if placement.is_replicate() and position != 0:
            return None
    return t.to_local()


def gather(vector: Tensor) -> Tensor:
    """``[world, len]``: every rank's vector, in rank order (one collective; no-op alone)."""
    world = world_size()
    if world == 1:
        return vector[None]
    parts = [torch.empty_like(vector) for _ in range(world)]
    dist.all_gather(parts, vector)
    return torch.stack(parts)


def pack(layout: Layout, parts: Mapping[str, Tensor]) -> Tensor:
    """One float64 vector of ``parts`` (block name → ``[rows, width]``) in the layout's order.

    Raises:
        ValueError: a block is missing or has another shape than the layout's.
    """
    pieces = []
    for name, rows, width in layout.blocks():
        part = parts.get(name)
        if part is None or tuple(part.shape) != (rows, width):
            got = None if part is None else tuple(part.shape)
            raise ValueError(f"block {name!r} must have shape {(rows, width)}; got {got}")
        pieces.append(part.reshape(-1).to(torch.float64))
    return torch.cat(pieces)


def split(values: Sequence[float], layout: Layout) -> dict[str, list[list[float]]]:
    """Cut one rank's host vector into the layout's blocks of rows, keyed by block name."""
    out, offset = {}, 0
    for name, rows, width in layout.blocks():
        out[name] = [values[offset + k * width : offset + (k + 1) * width] for k in range(rows)]
        offset += rows * width
    return out
