"""Lightning glue of ``LayerDiagnostics``' covariate-shift and ICS probes.

``ProbeOptions`` validates the constructor arguments; ``Probes`` translates Trainer events into
:class:`~ln_diagnostics.collect.shift.ShiftProbe` and :class:`~ln_diagnostics.collect.ics.ICSProbe`
calls, supplies the Lightning defaults (probe batch transfer, the loss from ``training_step``
with logging muted, ``training_step`` as the shift probe's forward pass for a module without
``forward``) and carries the shift references through checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor, nn

from ln_diagnostics._validate import check_globs, check_int, check_optional_int
from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.ics import ICSProbe, LossFn
from ln_diagnostics.collect.options import default_interval
from ln_diagnostics.collect.probing import (
    AttributeStateError,
    ForwardFn,
    detached_copy,
    is_plain,
    map_tensors,
    preserved_attributes,
)
from ln_diagnostics.collect.selection import plain_name
from ln_diagnostics.collect.shift import ShiftProbe
from ln_diagnostics.tags import layer_name, matches

#: Layers measured by ICS when ``ics_layers`` is not given.
DEFAULT_ICS_LAYERS = 4

#: Fewest steps between two shift probes by default: each is one extra no-grad forward pass
#: (about a third of a plain training step), so it runs 10x rarer than the scalars and at least
#: this many steps apart; step 0's probe always runs and becomes the ``_init`` reference.
MIN_SHIFT_INTERVAL = 100


def shift_interval(every_n_steps: int, shift_every_n_steps: int | None) -> int:
    """The shift probe's interval: as given (0 = off), or by default 10x rarer than the scalars
    and at least :data:`MIN_SHIFT_INTERVAL` steps apart.

    Example:
        >>> shift_interval(50, None), shift_interval(1, None), shift_interval(1, 5)
        (500, 100, 5)
    """
    if shift_every_n_steps is not None:
        return shift_every_n_steps
    return default_interval(every_n_steps, MIN_SHIFT_INTERVAL)


def _check_callable(name: str, value: Any, signature: str) -> Any:
    if value is not None and not callable(value):
        raise ValueError(f"{name} must be a callable {signature} or None; got {value!r}")
    return value


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
        layers = None if ics_layers is None else check_globs("ics_layers", ics_layers)
        if layers == ():
            raise ValueError(
                "ics_layers must be None or a non-empty list of module-name globs; "
                f"got {ics_layers!r}"
            )
        return cls(
            shift_every_n_steps=check_optional_int(
                "shift_every_n_steps", shift_every_n_steps, minimum=0
            ),
            ics_every_n_steps=check_int("ics_every_n_steps", ics_every_n_steps, minimum=0),
            probe_batch=probe_batch,
            probe_forward=_check_callable(
                "probe_forward", probe_forward, "(module, batch) -> output"
            ),
            ics_layers=layers,
            ics_loss=_check_callable("ics_loss", ics_loss, "(module, batch) -> scalar loss tensor"),
        )


@contextmanager
def _muted_logging(pl_module: Any) -> Iterator[None]:
    """Replace ``pl_module.log`` and ``log_dict`` by no-ops inside the block."""
    saved = {name: pl_module.__dict__.get(name) for name in ("log", "log_dict")}
    for name in saved:
        setattr(pl_module, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                pl_module.__dict__.pop(name, None)
            else:
                setattr(pl_module, name, value)


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


def _run_training_step(trainer: Any, module: Any, batch: Any, batch_idx: int) -> Any:
    """``module.training_step`` on ``batch`` as Lightning calls it (``batch_idx`` only when the
    signature takes it), with logging muted, inside the precision plugin's training context."""
    step = module.training_step
    args = (
        (batch, batch_idx)
        if is_param_in_hook_signature(step, "batch_idx", min_args=2)
        else (batch,)
    )
    plugin = getattr(trainer, "precision_plugin", None)
    context = getattr(plugin, "train_step_context", nullcontext)
    with _muted_logging(module), context():
        return step(*args)


def training_step_forward(trainer: Any) -> ForwardFn:
    """The shift probe's ``forward(module, batch)`` for a module without ``forward``: its
    ``training_step(batch, 0)`` with logging muted and the attributes it sets restored
    (:func:`~ln_diagnostics.collect.probing.preserved_attributes`); the output is ignored, so a
    loss tensor, a dict or ``None`` all do. The probe runs it under ``no_grad`` and restores RNG
    and buffers."""

    def forward(module: nn.Module, batch: Any) -> Any:
        try:
            with preserved_attributes(module):
                return _run_training_step(trainer, module, batch, 0)
        except AttributeStateError:
            raise  # our own bookkeeping failed, not the user's training_step
        except Exception as exc:
            raise RuntimeError(
                f"{type(module).__name__} has no forward(), so the probe ran its training_step "
                f"on the probe batch, which raised {type(exc).__name__}: {exc}"
            ) from exc

    return forward


def training_step_loss(trainer: Any, batch_idx: int) -> LossFn:
    """``loss(module, batch)`` that calls ``module.training_step(batch, batch_idx)`` with logging
    muted, inside the precision plugin's training context; a dict output gives its ``"loss"``."""

    def loss(module: nn.Module, batch: Any) -> Tensor:
        out = _run_training_step(trainer, module, batch, batch_idx)
        if isinstance(out, Mapping):
            out = out.get("loss")
        if not isinstance(out, Tensor):
            raise TypeError(
                f"training_step returned {type(out).__name__}, not a loss tensor or a dict with "
                "a 'loss' tensor"
            )
        return out

    return loss


def _to_device(pl_module: Any, batch: Any) -> Any:
    device = pl_module.device
    try:
        return pl_module.transfer_batch_to_device(batch, device, 0)
    except Exception:
        return map_tensors(batch, lambda t: t.to(device))


class Probes:
    """Runs the shift and ICS probes of one ``LayerDiagnostics`` during ``fit``."""

    def __init__(self, options: ProbeOptions) -> None:
        self.options = options
        self.shift: ShiftProbe | None = None
        self.ics: ICSProbe | None = None
        self._shift_every = 0
        self._ics_every = 0
        self._host_batch: Any = None  # the captured probe batch on the CPU, for checkpoints
        self._needs_transfer = False
        self._loaded: dict[str, Any] | None = None
        self._pending: dict[str, float] = {}

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: Any, pl_module: Any, collector: Collector, every: int) -> None:
        """Build the probes for a ``fit`` whose scalars log every ``every`` steps."""
        opts = self.options
        self._shift_every = shift_interval(every, opts.shift_every_n_steps)
        self._ics_every = opts.ics_every_n_steps
        self._pending = {}
        self.shift = self.ics = None
        forward = opts.probe_forward
        if self._shift_every and forward is None and not has_own_forward(pl_module):
            forward = self._training_step_forward(trainer, pl_module)
            self._shift_every = 0 if forward is None else self._shift_every
        if self._shift_every:
            self.shift = ShiftProbe.from_collector(
                collector, forward=forward, tag_prefix=collector.tag_prefix
            )
            if opts.probe_batch is not None:
                self.shift.batch, self._needs_transfer = opts.probe_batch, True
            if self._loaded is not None:
                self._apply_loaded()
        if self._ics_every:
            self.ics = self._build_ics(trainer, pl_module, collector)

    @staticmethod
    def _training_step_forward(trainer: Any, pl_module: Any) -> ForwardFn | None:
        """``training_step`` as the probe's forward pass, or ``None`` (with a warning) under
        manual optimization, whose ``training_step`` steps the optimizers itself."""
        if getattr(pl_module, "automatic_optimization", True):
            return training_step_forward(trainer)
        rank_zero_warn(
            f"LayerDiagnostics: covariate shift is disabled: {type(pl_module).__name__} has no "
            "forward() and uses manual optimization, so its training_step (which steps the "
            "optimizers) cannot stand in for a forward pass. Pass probe_forward=<callable(module, "
            "batch)> that runs the model on one batch, e.g. lambda module, batch: "
            "module.net(batch[0]), or shift_every_n_steps=0 to silence this."
        )
        return None

    def _build_ics(self, trainer: Any, pl_module: Any, collector: Collector) -> ICSProbe | None:
        opts = self.options
        if not getattr(pl_module, "automatic_optimization", True):
            rank_zero_warn("LayerDiagnostics: ICS needs automatic optimization; it is disabled.")
            return None
        if int(getattr(trainer, "accumulate_grad_batches", 1)) > 1:
            rank_zero_warn(
                "LayerDiagnostics: ICS compares the step's gradient with one re-computed on a "
                "single batch, which gradient accumulation makes incomparable; ICS is disabled "
                f"(accumulate_grad_batches={trainer.accumulate_grad_batches})."
            )
            return None
        if opts.ics_layers is None:
            candidates = [
                (name, m)
                for name, m in zip(collector.names, collector.modules, strict=True)
                if any(p.requires_grad for p in m.parameters())
            ]
        else:
            named = [(layer_name(plain_name(name)), m) for name, m in pl_module.named_modules()]
            candidates = [
                (name, m)
                for name, m in named
                if matches(name, opts.ics_layers, subtree=True)
                and any(p.requires_grad for p in m.parameters())
            ]
            if not candidates:
                names = [
                    n
                    for n, m in pl_module.named_modules()
                    if n and any(p.requires_grad for p in m.parameters(recurse=False))
                ][:8]
                raise ValueError(
                    f"ics_layers={list(opts.ics_layers)} matched no module with trainable "
                    f"parameters in {type(pl_module).__name__}; some names: "
                    f"{', '.join(names) or '(none)'}"
                )
        return ICSProbe(
            pl_module,
            candidates,
            loss=opts.ics_loss or training_step_loss(trainer, 0),
            max_layers=DEFAULT_ICS_LAYERS,
            select_all=opts.ics_layers is not None,
            pause=collector.paused,
            tag_prefix=collector.tag_prefix,
        )

    # ------------------------------------------------------------------ training events
    def batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, step: int
    ) -> None:
        """First micro-batch of optimizer step ``step`` (the caller calls once per step): shift
        probe, then ICS set-up."""
        shift = self.shift
        if shift is not None and not shift.disabled and step % self._shift_every == 0:
            if shift.batch is None:
                shift.batch = detached_copy(batch)
                self._host_batch = map_tensors(shift.batch, lambda t: t.cpu())
            elif self._needs_transfer:
                shift.batch, self._needs_transfer = _to_device(pl_module, shift.batch), False
            self._pending.update(shift.measure(step))
        ics = self.ics
        if ics is not None and not ics.disabled and step % self._ics_every == 0:
            loss = None if self.options.ics_loss else training_step_loss(trainer, batch_idx)
            ics.begin(batch, loss=loss)

    def before_optimizer_step(self) -> None:
        if self.ics is not None:
            self.ics.before_optimizer_step()

    def batch_end(self) -> dict[str, float]:
        """After the optimizer step: this step's probe scalars (possibly empty)."""
        scalars, self._pending = self._pending, {}
        if self.ics is not None and self.ics.active:
            scalars.update(self.ics.end())
        return scalars

    def release(self) -> None:
        """Drop the probes (and their references to the model), keeping the shift state."""
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
