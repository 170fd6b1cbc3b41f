"""``NormSwap``: replace BatchNorm with a per-sample normalization when a Lightning run starts."""

from __future__ import annotations

import weakref
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from ln_diagnostics._validate import check_bool, check_choice, check_globs
from ln_diagnostics.callbacks._logger import tensorboard_writer
from ln_diagnostics.nn.swap import TARGETS, SwapReport, swap_batchnorm

__all__ = ["NormSwap"]

TEXT_TAG = "norm_swap/report"


class NormSwap(pl.Callback):
    """Swap every BatchNorm layer of the LightningModule before training starts.

    The swap runs in ``setup``, which Lightning calls before it restores a checkpoint, builds the
    optimizers (``configure_optimizers``) and wraps the model for DDP. So the optimizer holds the
    new parameters, every DDP rank swaps its own replica identically, and
    ``Trainer.fit(model, ckpt_path=...)`` or ``Trainer.test(model, ckpt_path=...)`` on a fresh,
    unswapped model loads a checkpoint written by a swapped run. Each LightningModule is swapped
    once per callback; a later ``validate``/``test``/``predict`` on the same module does nothing.

    The report (see :class:`~ln_diagnostics.nn.swap.SwapReport`) is logged once on global rank 0:
    to the console, and as a text summary ``norm_swap/report`` in TensorBoard when the trainer
    has a TensorBoard logger. A swap that matches no layer warns once.

    A BatchNorm subclass that applies ``drop``/``act`` children after normalizing (timm's
    ``BatchNormAct2d``) becomes a :class:`~ln_diagnostics.nn.swap.NormAct` that keeps them; one
    whose behaviour cannot be kept makes ``setup`` raise ``ValueError`` naming it, before any
    layer is changed (leave it out with ``exclude``).

    Put ``NormSwap`` *before* callbacks that register hooks on layers (such as
    ``LayerDiagnostics``): hooks on a replaced BatchNorm layer do not move to its replacement.
    Layers created in ``configure_model`` do not exist yet at ``setup`` and are not swapped.

    Outside a Trainer (e.g. ``MyModel.load_from_checkpoint``), call
    :func:`~ln_diagnostics.nn.swap.swap_batchnorm` on the fresh model before loading the
    swapped run's ``state_dict``.

    Args:
        target: ``"layernorm"``, ``"groupnorm"`` or ``"rmsnorm"``; see
            :func:`~ln_diagnostics.nn.swap.swap_batchnorm`.
        include: glob patterns over qualified module names; only matching layers are swapped.
            ``None`` swaps every BatchNorm layer.
        exclude: glob patterns of layers to leave alone.
        copy_affine: copy the per-channel scale and shift of each BatchNorm layer.

    Example:
        >>> from pytorch_lightning import Trainer
        >>> from ln_diagnostics.callbacks import NormSwap
        >>> trainer = Trainer(callbacks=[NormSwap(target="layernorm", exclude=["head.*"])],
        ...                   logger=False, enable_progress_bar=False)
    """

    def __init__(
        self,
        *,
        target: Literal["layernorm", "groupnorm", "rmsnorm"] = "layernorm",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        copy_affine: bool = True,
    ) -> None:
        super().__init__()
        self.target = check_choice("target", target, TARGETS)
        include_p = check_globs("include", include, allow_empty=False)
        exclude_p = check_globs("exclude", exclude)
        self.include = list(include_p) if include_p else None
        self.exclude = list(exclude_p) if exclude_p else None
        self.copy_affine = check_bool("copy_affine", copy_affine)
        self.report: SwapReport | None = None
        self._done: weakref.WeakSet[Any] = weakref.WeakSet()
        self._logged = False
        self._warned = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Swap the module's BatchNorm layers unless this callback already did (any stage)."""
        if pl_module in self._done:
            return
        report = swap_batchnorm(
            pl_module,
            target=self.target,  # type: ignore[arg-type]
            include=self.include,
            exclude=self.exclude,
            copy_affine=self.copy_affine,
        )
        self._done.add(pl_module)
        self.report = report
        if not trainer.is_global_zero:
            return
        if not report.swapped:
            stage_name = str(getattr(stage, "value", stage))  # Lightning passes a str enum
            if not self._warned:
                self._warned = True
                rank_zero_warn(
                    f"NormSwap(target={self.target!r}, include={self.include!r}, "
                    f"exclude={self.exclude!r}) matched no BatchNorm layer in "
                    f"{type(pl_module).__name__} (stage {stage_name!r}); nothing was swapped."
                )
            return
        if self._logged:
            return
        self._logged = True
        rank_zero_info(str(report))
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_text(TEXT_TAG, report.to_markdown(), trainer.global_step)
            writer.flush()
