"""What the engine needs from the framework it runs under, and the plain-PyTorch answer.

A front end hands the engine a :class:`Host`: whether this process writes (rank 0), how to agree
with the other ranks, how to warn, how to move a batch to the model, and the framework's default
probe forward pass and ICS loss. :class:`Host` itself answers for a plain loop and for Lightning
Fabric (``torch.distributed`` directly); the Lightning callback subclasses it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ln_diagnostics.collect.ics import LossFn
from ln_diagnostics.collect.probing import ForwardFn, map_tensors


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Host:
    """The plain-PyTorch host: ``torch.distributed`` when a process group is up, else one process.

    Example:
        >>> host = Host()
        >>> host.is_global_zero, host.broadcast([1, 2]), host.any_rank(False)
        (True, [1, 2], False)
    """

    #: True when the user's loop steps the optimizer itself between our events (always, here).
    automatic_optimization = True
    #: micro-batches per optimizer step (the plain loop calls ``step()`` once per optimizer step)
    accumulate_grad_batches = 1
    #: the name the front end is known by in messages
    name = "attach()"

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model
        self._warned: set[str] = set()

    @property
    def is_global_zero(self) -> bool:
        """Whether this process writes: rank 0, or the only process."""
        return not _distributed() or dist.get_rank() == 0

    @property
    def rank(self) -> int:
        return dist.get_rank() if _distributed() else 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not _distributed():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one rank."""
        if not _distributed():
            return flag
        flags: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(flags, bool(flag))
        return any(flags)

    def warn(self, message: str) -> None:
        """Warn once per message, on rank 0 only."""
        if self.is_global_zero and message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)

    def planned_steps(self) -> int | None:
        """How many optimizer steps the run is set to take, from step 0; ``None``: unknown (a
        plain loop does not say)."""
        return None

    def to_device(self, batch: Any) -> Any:
        """``batch`` with its tensors on the device of the model's first parameter."""
        param = None if self.model is None else next(self.model.parameters(), None)
        device = torch.device("cpu") if param is None else param.device
        return map_tensors(batch, lambda t: t.to(device))

    def default_forward(self, module: nn.Module) -> ForwardFn | None:
        """The probe's forward pass when ``probe_forward`` is not given; ``None``: the module's
        own call convention (:func:`~ln_diagnostics.collect.probing.default_forward`)."""
        return None

    def default_loss(self, batch_idx: int) -> LossFn | None:
        """ICS's loss when ``ics_loss`` is not given; ``None``: there is no default."""
        return None
