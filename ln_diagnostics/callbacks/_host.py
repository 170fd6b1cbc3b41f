"""The engine's :class:`~ln_diagnostics.engine.host.Host` under a Lightning ``Trainer``.

Rank and collectives come from the Trainer's strategy, warnings from ``rank_zero_warn``, batches
move with the module's ``transfer_batch_to_device``, and a module without ``forward`` is probed
through its ``training_step`` with logging muted (also the default ICS loss).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor, nn

from ln_diagnostics.collect.ics import LossFn
from ln_diagnostics.collect.probing import (
    AttributeStateError,
    ForwardFn,
    map_tensors,
    preserved_attributes,
)
from ln_diagnostics.engine.host import Host


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


@contextmanager
def _isolated_from_trainer(trainer: Any) -> Iterator[None]:
    """Keep a probe's ``training_step`` from reaching past the module: the loggers are hidden
    (``self.logger`` is ``None``, so a direct ``self.logger.experiment`` write fails and the probe
    says so instead of writing a second point), and the optimizers' hyperparameters and the
    learning-rate schedulers' state are put back (a ``self.lr_schedulers().step()`` inside it)."""
    optimizers = list(getattr(trainer, "optimizers", None) or [])
    groups = [
        [
            {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            for group in opt.param_groups
        ]
        for opt in optimizers
    ]
    configs = list(getattr(trainer, "lr_scheduler_configs", None) or [])
    schedulers = [copy.deepcopy(config.scheduler.state_dict()) for config in configs]
    loggers = list(trainer.loggers)
    trainer.loggers = []
    try:
        yield
    finally:
        trainer.loggers = loggers
        for opt, saved in zip(optimizers, groups, strict=True):
            for group, hyper in zip(opt.param_groups, saved, strict=True):
                group.update(hyper)
        for config, state in zip(configs, schedulers, strict=True):
            config.scheduler.load_state_dict(state)


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
    ``training_step(batch, 0)`` with logging muted, the attributes it sets restored
    (:func:`~ln_diagnostics.collect.probing.preserved_attributes`), the loggers hidden and the
    optimizers' hyperparameters and schedulers put back (:func:`_isolated_from_trainer`); the
    output is ignored, so a loss tensor, a dict or ``None`` all do. The probe runs it under
    ``no_grad`` and restores RNG and buffers."""

    def forward(module: nn.Module, batch: Any) -> Any:
        try:
            with preserved_attributes(module), _isolated_from_trainer(trainer):
                return _run_training_step(trainer, module, batch, 0)
        except AttributeStateError:
            raise  # our own bookkeeping failed, not the user's training_step
        except Exception as exc:
            raise RuntimeError(
                f"{type(module).__name__} has no forward(), so the probe ran its training_step "
                f"on the probe batch (loggers hidden), which raised {type(exc).__name__}: {exc}"
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


class LightningHost(Host):
    """The host of a ``fit``: the Trainer's strategy, its rank-zero warnings and the module's
    ``training_step`` as the default probe forward pass and ICS loss."""

    name = "LayerDiagnostics"

    def __init__(self, trainer: Any, pl_module: Any) -> None:
        super().__init__(pl_module)
        self.trainer = trainer
        self.automatic_optimization = bool(getattr(pl_module, "automatic_optimization", True))
        self.accumulate_grad_batches = int(getattr(trainer, "accumulate_grad_batches", 1))

    @property
    def is_global_zero(self) -> bool:
        return bool(self.trainer.is_global_zero)

    @property
    def rank(self) -> int:
        return int(self.trainer.global_rank)

    def broadcast(self, obj: Any) -> Any:
        return self.trainer.strategy.broadcast(obj, src=0)

    def any_rank(self, flag: bool) -> bool:
        return bool(self.trainer.strategy.reduce_boolean_decision(flag, all=False))

    def warn(self, message: str) -> None:
        rank_zero_warn(message)

    def planned_steps(self) -> int | None:
        """The fit's ``max_steps`` or its epochs' optimizer steps, whichever ends it first;
        ``None`` for a fit without an end (an iterable dataset without ``max_steps``, or
        ``max_epochs=-1``)."""
        try:
            planned = self.trainer.estimated_stepping_batches
        except Exception:  # e.g. a data loader whose length cannot be known
            return None
        return int(planned) if 0 < planned < math.inf else None

    def to_device(self, batch: Any) -> Any:
        module = self.model
        device = module.device
        try:
            return module.transfer_batch_to_device(batch, device, 0)
        except Exception:
            return map_tensors(batch, lambda t: t.to(device))

    def default_forward(self, module: nn.Module) -> ForwardFn | None:
        """``training_step`` as the probe's forward pass, or ``None`` (with a warning) under
        manual optimization, whose ``training_step`` steps the optimizers itself."""
        if self.automatic_optimization:
            return training_step_forward(self.trainer)
        rank_zero_warn(
            f"LayerDiagnostics: covariate shift is disabled: {type(module).__name__} has no "
            "forward() and uses manual optimization, so its training_step (which steps the "
            "optimizers) cannot stand in for a forward pass. Pass probe_forward=<callable(module, "
            "batch)> that runs the model on one batch, e.g. lambda module, batch: "
            "module.net(batch[0]), or shift_every_n_steps=0 to silence this."
        )
        return None

    def default_loss(self, batch_idx: int) -> LossFn | None:
        return training_step_loss(self.trainer, batch_idx)
