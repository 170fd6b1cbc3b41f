"""``LayerDiagnostics``: per-layer activation and gradient statistics of a Lightning run.

A thin translation of Trainer hooks into :class:`~ln_diagnostics.engine.engine.Engine` events; the
engine does the work, the same for ``attach()`` and Lightning Fabric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from ln_diagnostics.callbacks._host import LightningHost
from ln_diagnostics.callbacks._logger import describe_loggers, tensorboard_writer
from ln_diagnostics.collect.options import histogram_interval
from ln_diagnostics.engine.engine import Engine, EngineFront
from ln_diagnostics.engine.options import DiagnosticsOptions
from ln_diagnostics.tensorboard.summary_text import find_swap_report


def model_hparams(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The hyperparameters Lightning would log for this run (module and datamodule)."""
    merged: dict[str, Any] = {}
    datamodule = getattr(trainer, "datamodule", None)
    for owner in (pl_module, datamodule):
        if owner is not None and getattr(owner, "_log_hyperparams", True):
            merged.update(dict(getattr(owner, "hparams_initial", None) or {}))
    merged.pop("_class_path", None)
    return merged


class LayerDiagnostics(EngineFront, pl.Callback):
    """Stream per-layer activation, gradient, parameter and update statistics to TensorBoard.

    Statistics are a snapshot of the logging step (all forward calls and micro-batches of that
    optimizer step), computed on the device; other steps cost one Python check per hook.

    Args:
        every_n_steps: log scalars on step 0 and every n-th optimizer step; default: the
            Trainer's ``log_every_n_steps``.
        histogram_every_n_steps: histograms of activations and gradients (and the heat maps'
            redraw); default 10× rarer than scalars and at least 500 steps apart (step 0, then
            every 500 steps at ``every_n_steps`` ≤ 50), 0 disables. Needs a TensorBoard logger.
        types: watch instances of these classes (classes or dotted paths such as
            ``"torch.nn.Linear"``) instead of the default: leaf modules with parameters, norm and
            activation modules.
        include: keep only modules whose qualified name matches one of these globs.
        exclude: then drop modules whose name matches one of these globs.
        track_updates: log ``updates/ratio/<layer>`` = ‖θ_{t+1} − θ_t‖ / ‖θ_t‖ (keeps a copy of
            the watched parameters during logging steps).
        shift_every_n_steps: covariate shift of every watched layer (``shift/…`` and
            ``health/shift_…``) on a fixed probe batch, one extra no-grad forward pass each time;
            default 10× rarer than scalars and at least 100 steps apart (step 0, which sets the
            ``_init`` reference, then every 100 steps with ``every_n_steps=1``, every 500 with
            50), 0 disables.
        ics_every_n_steps: gradient-based internal covariate shift (``ics/l2``, ``ics/cos``),
            one extra forward/backward per measured layer each time; 0 (default) disables.
        probe_batch: the batch the shift probe runs on; default: the first training batch.
        probe_forward: ``(module, batch) -> output`` that runs the model on the probe batch;
            default ``module(batch)`` for a tensor, ``module(**batch)`` for a dict, and for a
            tuple as many leading items as ``forward`` takes (``module(x)`` for ``(x, y)``); for
            a module without ``forward``, its ``training_step`` with logging muted.
        ics_layers: globs of the module names ICS measures; default up to 4 evenly spaced
            watched layers with parameters, in forward order.
        ics_loss: ``(module, batch) -> loss`` for ICS; default: ``training_step``'s loss with
            ``log``/``log_dict`` muted.
        group_depth: log activation, gradient, parameter, update and backprop statistics per
            block (the first ``group_depth`` dotted parts of the module name: with 3,
            ``encoder.layers.3.linear1`` is logged as ``encoder.layers.3``) instead of per
            layer, for models with thousands of modules; ``None`` (default) logs every layer.
            See :mod:`ln_diagnostics.collect.grouping` for how statistics are merged.
        diagnosis: turn the logged statistics into findings (:mod:`ln_diagnostics.diagnose`):
            the text ``diagnosis`` (a markdown table) is rewritten with every heat-map refresh
            and at fit end, when rank 0 also prints it; :meth:`diagnose` returns the findings.

    Attributes:
        last_logged: the scalars of the most recent logging step (read by
            ``DiagnosticThresholds``), or ``None``.

    A callback that reads ``last_logged`` can :meth:`add_listener` to be called as soon as a
    step's scalars are emitted, whatever its place in ``Trainer(callbacks=[...])``.

    Example:
        >>> from pytorch_lightning import Trainer
        >>> from pytorch_lightning.demos.boring_classes import BoringModel
        >>> import tempfile
        >>> trainer = Trainer(max_steps=2, callbacks=[LayerDiagnostics(every_n_steps=1)],
        ...     default_root_dir=tempfile.mkdtemp(), enable_progress_bar=False,
        ...     enable_model_summary=False, enable_checkpointing=False, logger=True)
        >>> trainer.fit(BoringModel())  # doctest: +ELLIPSIS
        LayerDiagnostics diagnosis (2 logging steps):
        ...
        >>> sorted(trainer.callbacks[0].last_logged.scalars)[:2]
        ['activations/absmax/layer', 'activations/kurtosis/layer']
        >>> [finding.kind for finding in trainer.callbacks[0].diagnose()]
        ['update_ratio_large']
    """

    def __init__(
        self,
        *,
        every_n_steps: int | None = None,
        histogram_every_n_steps: int | None = None,
        types: Sequence[str | type] | None = None,
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
    ) -> None:
        self.options = DiagnosticsOptions.from_arguments(locals())
        self.every_n_steps = self.options.every_n_steps
        self.histogram_every_n_steps = self.options.histogram_every_n_steps
        self.group_depth = self.options.group_depth
        self.diagnosis = self.options.diagnosis
        self.engine = Engine(self.options)
        self._begun: int | None = None
        self._paused = ExitStack()

    @property
    def state_key(self) -> str:
        """Distinct for callbacks with different options, so that several ``LayerDiagnostics``
        in one Trainer keep their own state in a checkpoint. Options at their default value are
        left out, so the key of a default callback is the one older checkpoints carry."""
        opts = self.options
        types = opts.types
        optional = {
            "histogram_every_n_steps": opts.histogram_every_n_steps,
            "types": None if types is None else [f"{t.__module__}.{t.__qualname__}" for t in types],
            "track_updates": None if opts.track_updates else False,
            "shift_every_n_steps": opts.shift_every_n_steps,
            "ics_every_n_steps": opts.ics_every_n_steps or None,
            "ics_layers": opts.ics_layers,
            "group_depth": opts.group_depth,
            "diagnosis": None if opts.diagnosis else False,
        }
        return self._generate_state_key(
            every_n_steps=opts.every_n_steps,
            include=opts.include,
            exclude=opts.exclude,
            **{name: value for name, value in optional.items() if value is not None},
        )

    # ------------------------------------------------------------------ set-up and tear-down
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise ValueError(
                "LayerDiagnostics needs a logger to write to; the Trainer has none "
                "(logger=False). Use Trainer(logger=True) or a TensorBoardLogger."
            )
        every = self.every_n_steps or max(1, int(trainer.log_every_n_steps))
        writer, loggers = None, []
        if trainer.is_global_zero:
            writer = tensorboard_writer(trainer)
            if writer is None:
                loggers = list(trainer.loggers)
                if histogram_interval(every, self.histogram_every_n_steps):
                    rank_zero_warn(
                        "LayerDiagnostics: histograms need a TensorBoardLogger; the Trainer's "
                        f"loggers are {describe_loggers(trainer)}, so histograms are skipped and "
                        "scalars go through logger.log_metrics."
                    )

        def log_metrics(scalars: dict[str, float], step: int) -> None:
            for logger in loggers:
                logger.log_metrics(scalars, step=step)

        self.engine.setup(
            pl_module,
            LightningHost(trainer, pl_module),
            every_n_steps=every,
            writer=writer,
            log_metrics=log_metrics if loggers else None,
            model_hparams=model_hparams(trainer, pl_module),
        )
        self._begun = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._release()

    def _release(self) -> None:
        self._paused.close()
        self.engine.close()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after every setup hook, so that NormSwap has reported
        report = find_swap_report(getattr(trainer, "callbacks", None) or [])
        self.engine.write_summary(
            swap_report=None if report is None else report.to_markdown(), step=trainer.global_step
        )

    # ------------------------------------------------------------------ training events
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self.engine.active or step == self._begun:
            return  # a later micro-batch of an accumulated step
        self._begun = step
        self.engine.begin_step(step, batch, batch_idx)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self.engine.before_optimizer_step(optimizer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._begun is None or trainer.global_step == self._begun:
            return  # mid-accumulation: the optimizer step has not happened yet
        self._begun = None
        self.engine.end_step()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.finish(trainer.global_step)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._paused.enter_context(self.engine.paused())

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.engine.eval_batch(batch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._paused.close()

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.engine.load_state_dict(state_dict)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        engine = Engine(self.options)  # a copy without hooks, writer or listeners
        engine.load_state_dict(self.engine.state_dict())
        state.update(engine=engine, _paused=ExitStack())
        return state
