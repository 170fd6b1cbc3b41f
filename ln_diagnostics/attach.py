"""``attach()``: the same diagnostics in a plain PyTorch loop or under Lightning Fabric."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ln_diagnostics._validate import argument_error, check_instance, check_int
from ln_diagnostics.collect.records import StepReport
from ln_diagnostics.engine.engine import Engine, EngineFront
from ln_diagnostics.engine.host import Host
from ln_diagnostics.engine.options import DiagnosticsOptions


class Diagnostics(EngineFront):
    """The handle returned by :func:`attach`; a context manager that detaches on exit.

    Per optimizer step call ``before_optimizer_step()`` after ``backward()`` (and after
    unscaling, before clipping) and ``step()`` after ``optimizer.step()``; optionally
    ``batch(batch)`` before the forward pass, which the ICS probe needs. Step 0 and every
    ``every_n_steps``-th step log.

    Attributes:
        engine: the :class:`~ln_diagnostics.engine.engine.Engine` doing the work.
        global_step: the number of the step in progress.
    """

    def __init__(
        self,
        engine: Engine,
        model: nn.Module,
        *,
        writer: Any | None,
        every_n_steps: int,
        host: Host | None = None,
    ) -> None:
        self.engine = engine
        self.global_step = 0
        engine.setup(model, host or Host(model), every_n_steps=every_n_steps, writer=writer)
        engine.write_summary(step=0)
        engine.begin_step(0)

    @property
    def collector(self) -> Any:
        """The :class:`~ln_diagnostics.collect.collector.Collector` (its ``names`` and
        ``modules`` are the watched layers); it keeps no hook after :meth:`detach`."""
        return self.engine.collector

    def batch(self, batch: Any) -> None:
        """Hand over this step's batch before its forward pass: the shift probe then runs on the
        first such batch (``model(x)`` for ``(x, y)``, ``model(**batch)`` for a dict), and ICS
        needs it. Without it the shift probe replays the model's first call of step 0."""
        self.engine.batch(batch)

    def before_optimizer_step(self, optimizer: Any | None = None) -> None:
        """Read gradients for this step: their total norm on every step (on the device, for
        the window sentinels), every statistic on logging steps."""
        self.engine.before_optimizer_step(optimizer)

    def step(self) -> StepReport | None:
        """Close the current step (after ``optimizer.step()``) and open the next one."""
        report = self.engine.end_step()
        self.global_step += 1
        self.engine.begin_step(self.global_step)
        return report

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No hooks of ours run inside the block: wrap an evaluation inside the training loop."""
        with self.engine.paused():
            yield

    def detach(self) -> None:
        """Write the last pictures and the diagnosis (rank 0 prints its findings table), remove
        every hook from the model and flush the writer. Safe to call twice."""
        if self.engine.active:
            self.engine.finish(max(0, self.global_step - 1))
        self.engine.close()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed loop needs: the step counter and the engine's state."""
        return {"global_step": self.global_step, **self.engine.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (call before the first step of the resumed loop)."""
        self.engine.cancel_step()
        self.engine.load_state_dict(state)
        self.global_step = int(state.get("global_step", self.global_step))
        self.engine.begin_step(self.global_step)

    def __enter__(self) -> Diagnostics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.detach()
        else:  # no diagnosis of a run that failed; the hooks still go
            self.engine.close()


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside Lightning Fabric's, DDP's or DataParallel's wrapper.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> unwrap(DataParallel(net)) is net
        True
    """
    while True:
        inner = getattr(model, "_original_module", None)  # lightning.fabric's _FabricModule
        if isinstance(inner, nn.Module) and inner is not model:
            model = inner
        elif isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        else:
            return model


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
    shift_every_n_steps: int | None = None,
    ics_every_n_steps: int = 0,
    probe_batch: Any | None = None,
    probe_forward: Callable[[Any, Any], Any] | None = None,
    ics_layers: str | Sequence[str] | None = None,
    ics_loss: Callable[[Any, Any], Any] | None = None,
    group_depth: int | None = None,
    diagnosis: bool = True,
) -> Diagnostics:
    """Watch ``model`` in a hand-written loop or under Lightning Fabric; use it as a context
    manager.

    The options, their defaults, the tags and the dashboards are those of
    :class:`~ln_diagnostics.callbacks.LayerDiagnostics` (see there), with two differences of a
    loop without a Trainer: ``every_n_steps`` defaults to 50 (Lightning's ``log_every_n_steps``),
    and ICS needs ``ics_loss`` and the step's batch through ``diag.batch(batch)``.

    Args:
        model: any ``nn.Module``, or one wrapped by Lightning Fabric (``fabric.setup``), DDP or
            DataParallel (anything else raises ``TypeError``).
        writer: a ``torch.utils.tensorboard.SummaryWriter``; ``None`` keeps only
            ``diag.last_logged`` and the reports returned by ``diag.step()``. Under DDP (Fabric's
            included) or FSDP2 (``fully_shard``), call ``attach`` on every rank with the same
            options and give the writer to rank 0 only: every rank's report holds the global
            statistics.
        every_n_steps: scalars on step 0 and every n-th step.
        histogram_every_n_steps, types, include, exclude, track_updates, shift_every_n_steps,
        ics_every_n_steps, probe_batch, probe_forward, ics_layers, ics_loss, group_depth,
        diagnosis: as for ``LayerDiagnostics``. Without ``probe_batch`` or ``diag.batch()``
            the shift probe replays the model's first call of the run.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with attach(model, every_n_steps=2, diagnosis=False) as diag:
        ...     for _ in range(3):
        ...         model(torch.randn(16, 4)).pow(2).mean().backward()
        ...         diag.before_optimizer_step(); opt.step(); opt.zero_grad(); _ = diag.step()
        >>> diag.last_logged.step, "gradients/norm/0" in diag.last_logged.scalars
        (2, True)
    """
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    options = DiagnosticsOptions.from_arguments(locals())
    check_int("every_n_steps", options.every_n_steps, minimum=1)
    if writer is not None and not hasattr(writer, "_get_file_writer"):
        raise argument_error(
            "writer", "a torch.utils.tensorboard.SummaryWriter or None", type(writer).__name__
        )
    inner = unwrap(model)
    return Diagnostics(Engine(options), inner, writer=writer, every_n_steps=options.every_n_steps)
