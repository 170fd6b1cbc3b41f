"""A logging step's device tensors in fixed per-module slots: one vector, collective and copy.

Every rank builds a vector of the same length (it depends only on the number of watched modules
and parameters, and on whether the step draws histograms), so under DDP or FSDP one
``all_gather`` moves every rank's statistics without any chance of a shape mismatch, even when a
module ran on one rank and not on another. The host then turns each rank's slots back into rows
and merges them.

Slot layout (float64): first the rank's :class:`Status`; per module, activations ``n, K,
S1..S4, min, max, nonzero, saturated, nonfinite`` and backprop ``Σ‖g‖², calls``; per parameter
``grad norm, param norm, update norm`` of the part of the tensor this rank counts (−1 when it
counts none, see :func:`counted_part`); on histogram steps, activation and gradient histograms
``min, max, sum, sum², counts…``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch
import torch.distributed as dist
from torch import Tensor

ACT_WIDTH = 11
BP_WIDTH = 2
PARAM_WIDTH = 3
_INF = math.inf


class Status(IntEnum):
    """How much of a logging step a rank measured; the host acts on the worst rank's status."""

    OK = 0
    GRADIENTS_LOST = 1  # reading gradients or parameters failed: no norms, ratios or histograms
    STEP_LOST = 2  # packing failed: the rank sends an empty vector of the same layout


@dataclass(frozen=True)
class Layout:
    """Sizes of one step's packed vector."""

    modules: int
    params: int
    hist_buckets: int  # 0 when the step draws no histograms

    @property
    def hist_width(self) -> int:
        return 4 + self.hist_buckets

    def sizes(self) -> list[int]:
        sizes = [1, self.modules * ACT_WIDTH, self.modules * BP_WIDTH, self.params * PARAM_WIDTH]
        if self.hist_buckets:
            sizes += [self.modules * self.hist_width] * 2
        return sizes


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
    """``[m, ACT_WIDTH]`` from per-call ``(module, numel, power_sums row)`` entries."""
    sums = torch.zeros(m, 8, dtype=torch.float64, device=device)
    shift = torch.zeros(m, dtype=torch.float64, device=device)
    low = torch.full((m,), _INF, dtype=torch.float64, device=device)
    high = torch.full((m,), -_INF, dtype=torch.float64, device=device)
    if rows:
        idx = _index(rows, device)
        data = _rows([r[2] for r in rows], device)  # FIELDS of power_sums
        n = torch.tensor([float(r[1]) for r in rows], dtype=torch.float64, device=device)
        sums.index_add_(0, idx, torch.cat([n[:, None], data[:, 1:5], data[:, 7:]], dim=1))
        shift.scatter_reduce_(0, idx, data[:, 0], "amax", include_self=False)
        low.scatter_reduce_(0, idx, data[:, 5], "amin")
        high.scatter_reduce_(0, idx, data[:, 6], "amax")
    columns = [sums[:, :1], shift[:, None], sums[:, 1:5], low[:, None], high[:, None], sums[:, 5:]]
    return torch.cat(columns, dim=1)


def pack_backprop(m: int, rows: Sequence[tuple[int, Tensor]], device: torch.device) -> Tensor:
    """``[m, BP_WIDTH]``: sum of squared output-gradient norms and number of calls."""
    out = torch.zeros(m, BP_WIDTH, dtype=torch.float64, device=device)
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
    """``[m, 4 + buckets]``: min, max, sum, sum of squares and bucket counts, merged per module."""
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


def split(values: Sequence[float], layout: Layout) -> list[list[list[float]]]:
    """Cut one rank's host vector into the layout's blocks of rows (the status first)."""
    widths = [1, ACT_WIDTH, BP_WIDTH, PARAM_WIDTH] + [layout.hist_width] * 2
    out, offset = [], 0
    for size, width in zip(layout.sizes(), widths, strict=False):
        block = values[offset : offset + size]
        out.append([block[k : k + width] for k in range(0, size, width)])
        offset += size
    return out
