"""``LayerDiagnostics``: per-layer activation and gradient statistics of a Lightning run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from ln_diagnostics._validate import check_bool, check_optional_int
from ln_diagnostics.callbacks._dashboard import (
    dashboard_state,
    finish_dashboard,
    restore_dashboard,
    start_dashboard,
    write_run_summary,
)
from ln_diagnostics.engine.diagnosis import Diagnosis, console_report
from ln_diagnostics.callbacks._logger import describe_loggers, tensorboard_writer
from ln_diagnostics.callbacks._probes import ProbeOptions, Probes
from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.grouping import block_names
from ln_diagnostics.collect.options import SelectionOptions, histogram_interval
from ln_diagnostics.collect.records import LoggedScalars, StepReport
from ln_diagnostics.diagnose import Finding
from ln_diagnostics.tensorboard.writer import write_report


class LayerDiagnostics(pl.Callback):
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
        self.every_n_steps = check_optional_int("every_n_steps", every_n_steps, minimum=1)
        self.group_depth = check_optional_int("group_depth", group_depth, minimum=1)
        self.diagnosis = check_bool("diagnosis", diagnosis)
        self._diagnosis: Diagnosis | None = None
        self.histogram_every_n_steps = check_optional_int(
            "histogram_every_n_steps", histogram_every_n_steps, minimum=0
        )
        self.options = SelectionOptions.create(
            types=types, include=include, exclude=exclude, track_updates=track_updates
        )
        self.last_logged: LoggedScalars | None = None
        self.n_logged = 0
        self._collector: Collector | None = None
        self._writer: Any | None = None
        self._loggers: list[Any] = []
        self._every = 1
        self._hist_every = 0
        self._begun: int | None = None
        self._paused = ExitStack()
        self._dashboard: Any | None = None
        self._dashboard_state: dict[str, Any] = {}
        self._listeners: list[Callable[[LoggedScalars], None]] = []
        self._probes = Probes(
            ProbeOptions.create(
                shift_every_n_steps=shift_every_n_steps,
                ics_every_n_steps=ics_every_n_steps,
                probe_batch=probe_batch,
                probe_forward=probe_forward,
                ics_layers=ics_layers,
                ics_loss=ics_loss,
            )
        )

    @property
    def state_key(self) -> str:
        """Distinct for callbacks with different options, so that several ``LayerDiagnostics``
        in one Trainer keep their own state in a checkpoint. Options at their default value are
        left out, so the key of a default callback is the one older checkpoints carry."""
        probe, types = self._probes.options, self.options.types
        optional = {
            "histogram_every_n_steps": self.histogram_every_n_steps,
            "types": None if types is None else [f"{t.__module__}.{t.__qualname__}" for t in types],
            "track_updates": None if self.options.track_updates else False,
            "shift_every_n_steps": probe.shift_every_n_steps,
            "ics_every_n_steps": probe.ics_every_n_steps or None,
            "ics_layers": probe.ics_layers,
            "group_depth": self.group_depth,
            "diagnosis": None if self.diagnosis else False,
        }
        return self._generate_state_key(
            every_n_steps=self.every_n_steps,
            include=self.options.include,
            exclude=self.options.exclude,
            **{name: value for name, value in optional.items() if value is not None},
        )

    def add_listener(self, listener: Callable[[LoggedScalars], None]) -> None:
        """Call ``listener(last_logged)`` after every emitted step, once it is written.

        Example:
            >>> diag = LayerDiagnostics()
            >>> seen = []
            >>> diag.add_listener(seen.append)
            >>> diag.remove_listener(seen.append)
        """
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[LoggedScalars], None]) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ------------------------------------------------------------------ set-up and tear-down
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise ValueError(
                "LayerDiagnostics needs a logger to write to; the Trainer has none "
                "(logger=False). Use Trainer(logger=True) or a TensorBoardLogger."
            )
        self._every = self.every_n_steps or max(1, int(trainer.log_every_n_steps))
        self._hist_every = histogram_interval(self._every, self.histogram_every_n_steps)
        self._writer, self._loggers = None, []
        if trainer.is_global_zero:
            self._writer = tensorboard_writer(trainer)
            if self._writer is None:
                self._loggers = list(trainer.loggers)
                if self._hist_every:
                    rank_zero_warn(
                        "LayerDiagnostics: histograms need a TensorBoardLogger; the Trainer's "
                        f"loggers are {describe_loggers(trainer)}, so histograms are skipped and "
                        "scalars go through logger.log_metrics."
                    )
            if self._writer is None:
                self._hist_every = 0
        collector = self.options.build(pl_module)
        # every rank packs the same layout: rank 0's schedule (histograms need rank 0's writer;
        # the other ranks' histograms are merged into it) and the same watched modules
        self._every, self._hist_every, names = trainer.strategy.broadcast(
            (self._every, self._hist_every, collector.names), src=0
        )
        if trainer.strategy.reduce_boolean_decision(names != collector.names, all=False):
            raise ValueError(
                "LayerDiagnostics: the ranks do not all watch the same modules (rank 0 watches "
                f"{len(names)}, this rank, {trainer.global_rank}, watches {len(collector.names)});"
                " build the same model and pass the same types/include/exclude on every rank, "
                "since every rank packs the same statistics layout."
            )
        self._collector = collector
        self._collector.attach()
        if self.group_depth is not None:
            self._collector.set_groups(
                block_names(self._collector.layer_names, depth=self.group_depth)
            )
        self._probes.setup(trainer, pl_module, self._collector, self._every)
        self._dashboard = start_dashboard(self, trainer, pl_module)  # None without a writer
        self._diagnosis = Diagnosis() if self.diagnosis else None
        self._begun = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._release()

    def _release(self) -> None:
        self._paused.close()
        self._probes.release()
        if self._collector is not None:
            self._collector.detach()
            self._collector = None
        if self._writer is not None:
            self._writer.flush()

    # ------------------------------------------------------------------ training events
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._collector is None or step == self._begun:
            return
        self._begun = step
        self._collector.begin_step(
            step,
            scalars=step % self._every == 0,
            histograms=self._hist_every > 0 and step % self._hist_every == 0,
        )
        self._probes.batch_start(trainer, pl_module, batch, batch_idx, step)
        if self._diagnosis is not None and step % self._every == 0:
            self._diagnosis.batch_start(batch)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self._collector is not None:
            self._collector.before_optimizer_step(optimizer)
            self._probes.before_optimizer_step()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._collector is None or self._begun is None or trainer.global_step == self._begun:
            return  # mid-accumulation: the optimizer step has not happened yet
        report = self._collector.end_step()
        step, self._begun = self._begun, None
        try:
            probed = self._probes.batch_end()
        except BaseException:  # e.g. Ctrl+C during the ICS probe: keep what the step measured
            if report is not None:
                self._emit(report)
            raise
        if probed:  # merged into the step's report, or a report of their own
            report = report or StepReport(step, {}, {})
            report.scalars.update(probed)
        if report is not None:
            self._emit(report)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_run_summary(self, trainer)  # after every setup hook, so NormSwap has reported

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        finish_dashboard(self)  # the last logging step's heat maps and depth profile
        if self._diagnosis is not None:
            findings = self._diagnosis.write(self._writer, trainer.global_step)
            if trainer.is_global_zero:
                print(console_report(findings, len(self._diagnosis.history)), flush=True)

    def diagnose(self) -> list[Finding]:
        """The findings on the statistics logged so far (empty with ``diagnosis=False``)."""
        return [] if self._diagnosis is None else self._diagnosis.findings()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._collector is not None:
            self._paused.enter_context(self._collector.paused())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._paused.close()

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._diagnosis is not None:
            self._diagnosis.eval_batch(batch)

    def _emit(self, report: StepReport) -> None:
        self.last_logged = LoggedScalars(report.step, report.scalars)
        self.n_logged += 1
        if self._writer is not None:
            write_report(self._writer, report)
        if self._dashboard is not None:
            self._dashboard.update(report)
        if self._diagnosis is not None:
            self._diagnosis.update(report, self._collector, self._writer, self._dashboard)
        for logger in self._loggers:
            logger.log_metrics(dict(report.scalars), step=report.step)
        for listener in list(self._listeners):
            listener(self.last_logged)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        diagnosis = {} if self._diagnosis is None else {"diagnosis": self._diagnosis.state_dict()}
        return {
            "n_logged": self.n_logged,
            **self._probes.state_dict(),
            **dashboard_state(self),
            **diagnosis,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.n_logged = int(state_dict.get("n_logged", 0))
        self._probes.load_state_dict(state_dict)
        restore_dashboard(self, state_dict)
        if self._diagnosis is not None:
            self._diagnosis.load_state_dict(state_dict.get("diagnosis", {}))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _collector=None,
            _writer=None,
            _loggers=[],
            _paused=ExitStack(),
            _dashboard=None,
            _listeners=[],
        )
        return state
