"""``attach()``: diagnostics in a plain PyTorch training loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ln_diagnostics._validate import check_int, check_optional_int
from ln_diagnostics.collect.loop import Diagnostics
from ln_diagnostics.collect.options import SelectionOptions, histogram_interval
from ln_diagnostics.tensorboard.writer import write_report


def attach(
    model: nn.Module,
    *,
    writer: Any | None = None,
    every_n_steps: int = 50,
    histogram_every_n_steps: int | None = None,
    types: Sequence[type | str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    track_updates: bool = True,
) -> Diagnostics:
    """Watch ``model`` in a hand-written loop; use it as a context manager.

    Args:
        model: any ``nn.Module`` (anything else raises ``TypeError``).
        writer: a ``torch.utils.tensorboard.SummaryWriter``; ``None`` keeps only
            ``diag.last_logged`` and the reports returned by ``diag.step()``. Under DDP or
            FSDP2 (``fully_shard``), call ``attach`` on every rank with the same options and
            give the writer to rank 0 only: every rank's report holds the global statistics.
        every_n_steps: scalars on step 0 and every n-th step.
        histogram_every_n_steps: histograms of activations and gradients; default
            ``10 * every_n_steps`` and at least 500 steps apart, 0 disables.
        types: watch instances of these classes (or dotted class paths) instead of the default
            (leaf modules with parameters, norm and activation modules).
        include: keep only modules whose qualified name matches one of these globs.
        exclude: then drop modules whose name matches one of these globs.
        track_updates: measure ``‖θ_{t+1} − θ_t‖ / ‖θ_t‖`` on logging steps.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with attach(model, every_n_steps=2) as diag:
        ...     for _ in range(3):
        ...         model(torch.randn(16, 4)).pow(2).mean().backward()
        ...         diag.before_optimizer_step(); opt.step(); opt.zero_grad(); _ = diag.step()
        >>> diag.last_logged.step, "gradients/norm/0" in diag.last_logged.scalars
        (2, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1)
    hist = check_optional_int("histogram_every_n_steps", histogram_every_n_steps, minimum=0)
    if writer is not None and not hasattr(writer, "_get_file_writer"):
        raise ValueError(
            f"writer must be a torch.utils.tensorboard.SummaryWriter or None; got "
            f"{type(writer).__name__}"
        )
    options = SelectionOptions.create(
        types=types, include=include, exclude=exclude, track_updates=track_updates
    )
    return Diagnostics(
        options.build(model),
        sink=None if writer is None else lambda report: write_report(writer, report),
        flush=None if writer is None else writer.flush,
        every_n_steps=every_n_steps,
        histogram_every_n_steps=histogram_interval(every_n_steps, hist),
    )
