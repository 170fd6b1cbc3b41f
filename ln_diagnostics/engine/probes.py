"""The covariate-shift and ICS probes of a run, driven by the engine's step events.

``ProbeOptions`` validates the options; ``Probes`` schedules
:class:`~ln_diagnostics.collect.shift.ShiftProbe` and :class:`~ln_diagnostics.collect.ics.ICSProbe`,
captures the probe batch (the first training batch a front end hands over, or in a plain loop the
inputs of the model's first call), moves a given ``probe_batch`` to the model, asks the
:class:`~ln_diagnostics.engine.host.Host` for the framework's defaults (Lightning: the
``training_step`` as forward pass and loss) and carries the shift references through checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from ln_diagnostics._validate import check_callable, check_globs, check_int, check_optional_int
from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.ics import ICSProbe, LossFn
from ln_diagnostics.collect.probing import (
    ForwardFn,
    default_forward,
    detached_copy,
    is_plain,
    map_tensors,
)
from ln_diagnostics.collect.selection import plain_name
from ln_diagnostics.collect.shift import ShiftProbe
from ln_diagnostics.engine.schedule import Schedule, due
from ln_diagnostics.tags import layer_name, matches

#: Layers measured by ICS when ``ics_layers`` is not given.
DEFAULT_ICS_LAYERS = 4


@dataclass(frozen=True)
class ProbeOptions:
    """Validated shift/ICS options of ``LayerDiagnostics``.

    Example:
        >>> ProbeOptions.create(shift_every_n_steps=0, ics_every_n_steps=0).shift_every_n_steps
        0
    """

    shift_every_n_steps: int | None = None
    ics_every_n_steps: int = 0
    probe_batch: Any = None
    probe_forward: ForwardFn | None = None
    ics_layers: tuple[str, ...] | None = None
    ics_loss: LossFn | None = None

    @classmethod
    def create(
        cls,
        *,
        shift_every_n_steps: int | None = None,
        ics_every_n_steps: int = 0,
        probe_batch: Any = None,
        probe_forward: ForwardFn | None = None,
        ics_layers: str | Sequence[str] | None = None,
        ics_loss: LossFn | None = None,
    ) -> ProbeOptions:
        """Validate user input; errors name the argument, the expectation and the value."""
        layers = (
            None if ics_layers is None else check_globs("ics_layers", ics_layers, allow_empty=False)
        )
        return cls(
            shift_every_n_steps=check_optional_int(
                "shift_every_n_steps", shift_every_n_steps, minimum=0
            ),
            ics_every_n_steps=check_int("ics_every_n_steps", ics_every_n_steps, minimum=0),
            probe_batch=probe_batch,
            probe_forward=check_callable(
                "probe_forward", probe_forward, "(module, batch) -> output"
            ),
            ics_layers=layers,
            ics_loss=check_callable("ics_loss", ics_loss, "(module, batch) -> scalar loss tensor"),
        )


#: Where ``forward`` is defined when a LightningModule's class does not define its own.
_BASE_FORWARDS = {
    ("torch.nn.modules.module", "Module"),
    ("pytorch_lightning.core.module", "LightningModule"),
    ("lightning.pytorch.core.module", "LightningModule"),
}


def has_own_forward(module: nn.Module) -> bool:
    """True when ``module``'s class (or a base class of the user's) defines ``forward``, rather
    than inheriting the unimplemented one of ``nn.Module`` / ``LightningModule``.

    Example:
        >>> from pytorch_lightning import LightningModule
        >>> has_own_forward(nn.Linear(2, 2)), has_own_forward(LightningModule())
        (True, False)
    """
    for cls in type(module).__mro__:
        if "forward" in vars(cls):
            return (cls.__module__, cls.__qualname__) not in _BASE_FORWARDS
    return False


@dataclass(frozen=True)
class ModelInputs:
    """The positional and keyword arguments of a model call, captured as the probe batch of a
    plain loop that does not hand its batches over."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _with_captured_inputs(forward: ForwardFn | None) -> ForwardFn:
    """``forward``, except that captured :class:`ModelInputs` replay the model call itself."""
    inner = forward or default_forward

    def run(module: nn.Module, batch: Any) -> Any:
        if isinstance(batch, ModelInputs):
            return module(*batch.args, **batch.kwargs)
        return inner(module, batch)

    return run


_NO_BATCH: Any = object()


class Probes:
    """Runs the shift and ICS probes of one run."""

    def __init__(self, options: ProbeOptions) -> None:
        self.options = options
        self.shift: ShiftProbe | None = None
        self.ics: ICSProbe | None = None
        self.shift_every = 0
        self.ics_every = 0
        self._host: Any = None
        self._host_batch: Any = None  # the captured probe batch on the CPU, for checkpoints
        self._needs_transfer = False
        self._loaded: dict[str, Any] | None = None
        self._pending: dict[str, float] = {}
        self._shift_due = self._ics_due = False
        self._step = 0  # the step in progress, set by begin()
        self._capture: RemovableHandle | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self, host: Any, model: nn.Module, collector: Collector, schedule: Schedule) -> None:
        """Build the probes for a run on ``schedule``."""
        opts = self.options
        self._host = host
        self.shift_every, self.ics_every = schedule.shift, schedule.ics
        self._pending = {}
        self.shift = self.ics = None
        forward = opts.probe_forward
        if self.shift_every and forward is None and not has_own_forward(model):
            forward = host.default_forward(model)
            self.shift_every = 0 if forward is None else self.shift_every
        if self.shift_every:
            self.shift = ShiftProbe.from_collector(
                collector, forward=_with_captured_inputs(forward), tag_prefix=collector.tag_prefix
            )
            if opts.probe_batch is not None:
                self.shift.batch, self._needs_transfer = opts.probe_batch, True
            if self._loaded is not None:
                self._apply_loaded()
        if self.ics_every:
            self.ics = self._build_ics(host, model, collector)

    def _build_ics(self, host: Any, model: nn.Module, collector: Collector) -> ICSProbe | None:
        opts = self.options
        if opts.ics_loss is None and host.default_loss(0) is None:
            raise ValueError(
                f"ics_every_n_steps={opts.ics_every_n_steps} needs ics_loss=<callable(module, "
                f"batch) -> loss> under {host.name}, and the step's batch handed over before the "
                "forward pass (diag.batch(batch)); or ics_every_n_steps=0"
            )
        if not host.automatic_optimization:
            host.warn(f"{host.name}: ICS needs automatic optimization; it is disabled.")
            return None
        if int(host.accumulate_grad_batches) > 1:
            host.warn(
                f"{host.name}: ICS compares the step's gradient with one re-computed on a "
                "single batch, which gradient accumulation makes incomparable; ICS is disabled "
                f"(accumulate_grad_batches={host.accumulate_grad_batches})."
            )
            return None
        if opts.ics_layers is None:
            candidates = [
                (name, m)
                for name, m in zip(collector.names, collector.modules, strict=True)
                if any(p.requires_grad for p in m.parameters())
            ]
        else:
            named = [(layer_name(plain_name(name)), m) for name, m in model.named_modules()]
            candidates = [
                (name, m)
                for name, m in named
                if matches(name, opts.ics_layers, subtree=True)
                and any(p.requires_grad for p in m.parameters())
            ]
            if not candidates:
                names = [
                    n
                    for n, m in model.named_modules()
                    if n and any(p.requires_grad for p in m.parameters(recurse=False))
                ][:8]
                raise ValueError(
                    f"ics_layers={list(opts.ics_layers)} matched no module with trainable "
                    f"parameters in {type(model).__name__}; some names: "
                    f"{', '.join(names) or '(none)'}"
                )
        return ICSProbe(
            model,
            candidates,
            loss=opts.ics_loss or host.default_loss(0),
            max_layers=DEFAULT_ICS_LAYERS,
            select_all=opts.ics_layers is not None,
            pause=collector.paused,
            tag_prefix=collector.tag_prefix,
        )

    # ------------------------------------------------------------------ training events
    def begin(self, step: int, batch: Any = _NO_BATCH, batch_idx: int = 0) -> None:
        """Optimizer step ``step`` begins (once per step, before its first forward pass).

        The shift probe runs now when it has its batch; otherwise on the step's batch, handed
        over here or through :meth:`batch`, or else on the inputs of the model's next call.
        """
        self._remove_capture()
        shift, ics = self.shift, self.ics
        self._shift_due = shift is not None and not shift.disabled and due(self.shift_every, step)
        self._ics_due = ics is not None and not ics.disabled and due(self.ics_every, step)
        self._step = step
        if self._shift_due and shift is not None and shift.batch is not None:
            self._measure_shift()
        if batch is not _NO_BATCH:
            self.batch(batch, batch_idx)
        elif self._shift_due and shift is not None:
            self._capture = shift.model.register_forward_pre_hook(self._captured, with_kwargs=True)

    def batch(self, batch: Any, batch_idx: int = 0) -> None:
        """The current step's batch, before its forward pass."""
        self._remove_capture()
        if self._shift_due and self.shift is not None:
            self.shift.batch = detached_copy(batch)
            self._host_batch = map_tensors(self.shift.batch, lambda t: t.cpu())
            self._measure_shift()
        if self._ics_due and self.ics is not None:
            self._ics_due = False
            loss = None if self.options.ics_loss else self._host.default_loss(batch_idx)
            self.ics.begin(batch, loss=loss)

    def _captured(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._remove_capture()
        if self._shift_due and self.shift is not None:
            self.shift.batch = ModelInputs(detached_copy(args), detached_copy(kwargs))
            self._measure_shift()

    def _measure_shift(self) -> None:
        assert self.shift is not None
        if self._needs_transfer:
            self.shift.batch, self._needs_transfer = self._host.to_device(self.shift.batch), False
        self._shift_due = False
        self._pending.update(self.shift.measure(self._step))

    def _remove_capture(self) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def before_optimizer_step(self) -> None:
        if self.ics is not None:
            self.ics.before_optimizer_step()

    def end(self) -> dict[str, float]:
        """After the optimizer step: this step's probe scalars (possibly empty)."""
        self._remove_capture()
        if self._ics_due and self.ics is not None:
            self._ics_due = False
            self._host.warn(
                f"{self._host.name}: ICS is due but no batch was handed over before the forward "
                "pass; call diag.batch(batch) at the start of each step"
            )
        scalars, self._pending = self._pending, {}
        if self.ics is not None and self.ics.active:
            scalars.update(self.ics.end())
        return scalars

    def release(self) -> None:
        """Drop the probes (and their references to the model), keeping the shift state."""
        self._remove_capture()
        if self.ics is not None:
            self.ics.cancel()
        if self.shift is not None:
            self._loaded = self.state_dict().get("shift")
        self.shift = self.ics = None
        self._pending = {}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """``{"shift": {"init", "prev", "batch"}}``; the batch only when it was captured from
        training (not ``probe_batch``) and is plain enough for ``torch.load(weights_only=True)``."""
        if self.shift is None:
            return {} if self._loaded is None else {"shift": self._loaded}
        state = self.shift.state_dict()
        if self.options.probe_batch is None:
            if self._host_batch is None or not is_plain(self._host_batch):
                return {}  # the references are only meaningful with their batch
            state["batch"] = self._host_batch
        return {"shift": state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shift = state.get("shift")
        self._loaded = dict(shift) if isinstance(shift, Mapping) else None
        if self.shift is not None and self._loaded is not None:
            self._apply_loaded()

    def _apply_loaded(self) -> None:
        assert self.shift is not None and self._loaded is not None
        self.shift.load_state_dict(self._loaded)
        batch = self._loaded.get("batch")
        if batch is not None and self.options.probe_batch is None:
            self._host_batch = batch
            self.shift.batch, self._needs_transfer = batch, True
        self._loaded = None
