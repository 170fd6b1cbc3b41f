"""The engine of one diagnostics run, below every front end.

Front ends translate their framework's events into these calls, in this order per optimizer
step: :meth:`Engine.begin_step` (before the step's first forward pass; with the step's batch when
the front end has it), :meth:`Engine.before_optimizer_step` (gradients final, before clipping and
the optimizer), :meth:`Engine.end_step` (after the optimizer step); and once per run
:meth:`Engine.setup`, :meth:`Engine.write_summary`, :meth:`Engine.finish`, :meth:`Engine.close`.
The engine owns the schedule, the collector, the probes, the dashboard and the diagnosis, so the
Lightning callback, ``attach()`` and Lightning Fabric give the same tags and values.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from ln_diagnostics.engine.host import Host
    >>> from ln_diagnostics.engine.options import DiagnosticsOptions
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> engine = Engine(DiagnosticsOptions.create(shift_every_n_steps=0, diagnosis=False))
    >>> engine.setup(model, Host(model), every_n_steps=1, writer=None)
    >>> engine.begin_step(0)
    >>> model(torch.randn(16, 4)).sum().backward()
    >>> engine.before_optimizer_step()
    >>> report = engine.end_step()
    >>> engine.close()
    >>> report.step, "gradients/norm/0" in report.scalars
    (0, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

from torch import nn

from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.grouping import block_names
from ln_diagnostics.collect.records import LoggedScalars, StepReport
from ln_diagnostics.diagnose import Finding
from ln_diagnostics.engine.dashboard import layer_rows, start_dashboard
from ln_diagnostics.engine.diagnosis import Diagnosis, console_report
from ln_diagnostics.engine.host import Host
from ln_diagnostics.engine.options import DiagnosticsOptions
from ln_diagnostics.engine.probes import _NO_BATCH, Probes
from ln_diagnostics.engine.schedule import Schedule
from ln_diagnostics.tensorboard.dashboard import Dashboard
from ln_diagnostics.tensorboard.writer import write_report

Listener = Callable[[LoggedScalars], None]


class Engine:
    """Schedule, collector, probes, dashboard and diagnosis of one run.

    Args:
        options: the validated options (:class:`~ln_diagnostics.engine.options.DiagnosticsOptions`).

    Attributes:
        collector: the :class:`~ln_diagnostics.collect.collector.Collector`, once :meth:`setup`
            ran (kept, without hooks, after :meth:`close`).
        last_logged: the scalars of the most recent logging step, or ``None``.
        n_logged: how many steps have logged (kept through checkpoints).
        schedule: the resolved intervals, once :meth:`setup` ran.
    """

    def __init__(self, options: DiagnosticsOptions) -> None:
        self.options = options
        self.probes = Probes(options.probe)
        self.schedule: Schedule | None = None
        self.collector: Collector | None = None
        self.writer: Any | None = None
        self.dashboard: Dashboard | None = None
        self.diagnosis: Diagnosis | None = None
        self.last_logged: LoggedScalars | None = None
        self.n_logged = 0
        self._host: Host | None = None
        self._log_metrics: Callable[[dict[str, float], int], None] | None = None
        self._listeners: list[Listener] = []
        self._dashboard_state: dict[str, Any] = {}
        self._diagnosis_state: dict[str, Any] = {}
        self._step: int | None = None
        self._active = False

    # ------------------------------------------------------------------ set-up and tear-down
    def setup(
        self,
        model: nn.Module,
        host: Host,
        *,
        every_n_steps: int,
        writer: Any | None,
        log_metrics: Callable[[dict[str, float], int], None] | None = None,
        model_hparams: Mapping[str, Any] | None = None,
    ) -> None:
        """Hook ``model`` and resolve the schedule for a run that logs every ``every_n_steps``.

        ``writer`` (a ``SummaryWriter``, rank 0 only) gets scalars, histograms and dashboards;
        without one, ``log_metrics(scalars, step)`` gets the scalars. Every rank adopts rank 0's
        schedule and must watch the same modules, since all pack the same layout.
        """
        opts = self.options
        schedule = Schedule.resolve(
            every_n_steps=every_n_steps,
            histogram_every_n_steps=opts.histogram_every_n_steps,
            shift_every_n_steps=opts.shift_every_n_steps,
            ics_every_n_steps=opts.ics_every_n_steps,
        )
        if writer is None:
            schedule = replace(schedule, histograms=0)  # histograms need a SummaryWriter
        collector = opts.selection.build(model)
        # histograms need rank 0's writer (the other ranks' are merged into it)
        schedule, names = host.broadcast((schedule, collector.names))
        if host.any_rank(names != collector.names):
            raise ValueError(
                f"{host.name}: the ranks do not all watch the same modules (rank 0 watches "
                f"{len(names)}, this rank, {host.rank}, watches {len(collector.names)}); build "
                "the same model and pass the same types/include/exclude on every rank, since "
                "every rank packs the same statistics layout."
            )
        self._host, self.schedule, self.writer = host, schedule, writer
        self._log_metrics = log_metrics
        self.collector, self._active = collector, True
        collector.attach()
        if opts.group_depth is not None:
            collector.set_groups(block_names(collector.layer_names, depth=opts.group_depth))
        self.probes.setup(host, model, collector, schedule)
        if writer is not None:
            resolved = self.run_options()
            self.dashboard = start_dashboard(
                writer,
                collector,
                heatmap_every_n_steps=schedule.heatmaps,
                varied={name: resolved[name] for name in opts.changed()},
                model_hparams=model_hparams or {},
                state=self._dashboard_state,
                warn=host.warn,
            )
            self.dashboard.painter.start()  # its start-up overlaps the first steps
        if opts.diagnosis:
            self.diagnosis = Diagnosis()
            self.diagnosis.load_state_dict(self._diagnosis_state)
        self._step = None

    def run_options(self) -> dict[str, Any]:
        """The options, with the intervals the run resolved."""
        options = self.options.as_dict()
        if self.schedule is not None:
            options["every_n_steps"] = self.schedule.scalars
            options["histogram_every_n_steps"] = self.schedule.histograms
        return options

    def write_summary(self, *, swap_report: str | None = None, step: int = 0) -> None:
        """The text summary: watched layers, options and a NormSwap report if one ran."""
        if self.dashboard is not None and self.collector is not None:
            self.dashboard.write_summary(
                layer_rows(self.collector), self.run_options(), swap_report=swap_report, step=step
            )

    def close(self) -> None:
        """Remove every hook and flush the writer (idempotent); the state is kept."""
        self.probes.release()
        if self._active and self.collector is not None:
            self.collector.detach()
        self._active, self._step = False, None
        if self.dashboard is not None:
            self.dashboard.close()
            self._dashboard_state = self.dashboard.state_dict()
        if self.diagnosis is not None:
            self._diagnosis_state = self.diagnosis.state_dict()
        if self.writer is not None:
            self.writer.flush()

    # ------------------------------------------------------------------ steps
    @property
    def active(self) -> bool:
        """Whether the engine is set up and its hooks are on the model."""
        return self._active

    def begin_step(self, step: int, batch: Any = _NO_BATCH, batch_idx: int = 0) -> None:
        """Optimizer step ``step`` begins: before its first forward pass."""
        if not self._active or self.collector is None or self.schedule is None:
            return
        self._step = step
        logs = self.schedule.logs(step)
        self.collector.begin_step(step, scalars=logs, histograms=self.schedule.histograms_at(step))
        self.probes.begin(step, batch, batch_idx)
        if self.diagnosis is not None and logs and batch is not _NO_BATCH:
            self.diagnosis.batch_start(batch)

    def batch(self, batch: Any, batch_idx: int = 0) -> None:
        """Hand over the current step's batch (a plain loop's optional call)."""
        if self._active and self._step is not None:
            self.probes.batch(batch, batch_idx)
            if self.diagnosis is not None and self.schedule and self.schedule.logs(self._step):
                self.diagnosis.batch_start(batch)

    def eval_batch(self, batch: Any) -> None:
        """A validation batch (for the diagnosis' batch-size checks)."""
        if self.diagnosis is not None:
            self.diagnosis.eval_batch(batch)

    def before_optimizer_step(self, optimizer: Any | None = None) -> None:
        """Gradients are final for this step."""
        if self._active and self.collector is not None:
            self.collector.before_optimizer_step(optimizer)
            self.probes.before_optimizer_step()

    def end_step(self) -> StepReport | None:
        """The optimizer stepped: measure, emit and return the step's report (``None`` when the
        step did not log)."""
        if not self._active or self.collector is None or self._step is None:
            return None
        report = self.collector.end_step()
        step, self._step = self._step, None
        try:
            probed = self.probes.end()
        except BaseException:  # e.g. Ctrl+C during the ICS probe: keep what the step measured
            if report is not None:
                self._emit(report)
            raise
        if probed:  # merged into the step's report, or a report of their own
            report = report or StepReport(step, {}, {})
            report.scalars.update(probed)
        if report is not None:
            self._emit(report)
        return report

    def cancel_step(self) -> None:
        """Drop the open step without measuring or emitting it (a loop about to resume)."""
        if self._active and self.collector is not None and self._step is not None:
            self.collector.end_step()
            self.probes.end()
            self._step = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No hooks of ours run inside the block (validation, a user's evaluation)."""
        with self.collector.paused() if self._active and self.collector else nullcontext():
            yield

    def _emit(self, report: StepReport) -> None:
        self.last_logged = LoggedScalars(report.step, report.scalars)
        self.n_logged += 1
        if self.writer is not None:
            write_report(self.writer, report)
        if self.dashboard is not None:
            self.dashboard.update(report, last=self._last_logging_step(report.step))
        if self.diagnosis is not None:
            self.diagnosis.update(report, self.collector, self.writer, self.dashboard)
        if self._log_metrics is not None:
            self._log_metrics(dict(report.scalars), report.step)
        for listener in list(self._listeners):
            listener(self.last_logged)

    def _last_logging_step(self, step: int) -> bool:
        """Whether no step after ``step`` logs before the run's planned end (``False`` when the
        host does not know the end): its pictures are drawn now, while the last steps train."""
        planned = None if self._host is None else self._host.planned_steps()
        if planned is None or self.schedule is None or not self.schedule.logs(step):
            return False
        return planned - self.schedule.scalars <= step < planned

    # ------------------------------------------------------------------ listeners
    def add_listener(self, listener: Listener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ------------------------------------------------------------------ end of the run
    def finish(self, step: int) -> list[Finding]:
        """The last pictures and the diagnosis; rank 0 prints the findings table."""
        if self.dashboard is not None:
            self.dashboard.finish()
        if self.diagnosis is None:
            return []
        findings = self.diagnosis.write(self.writer, step)
        if self._host is None or self._host.is_global_zero:
            title = "LayerDiagnostics" if self._host is None else self._host.name
            print(console_report(findings, len(self.diagnosis.history), title=title), flush=True)
        return findings

    def diagnose(self) -> list[Finding]:
        """The findings on the statistics logged so far (empty with ``diagnosis=False``)."""
        return [] if self.diagnosis is None else self.diagnosis.findings()

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        dashboard = self._dashboard_state if self.dashboard is None else self.dashboard.state_dict()
        diagnosis = self._diagnosis_state if self.diagnosis is None else self.diagnosis.state_dict()
        return {
            "n_logged": self.n_logged,
            **self.probes.state_dict(),
            "dashboard": dashboard,
            "diagnosis": diagnosis,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.n_logged = int(state.get("n_logged", 0))
        self.probes.load_state_dict(state)
        self._dashboard_state = dict(state.get("dashboard", {}))
        if self.dashboard is not None:
            self.dashboard.load_state_dict(self._dashboard_state)
        self._diagnosis_state = dict(state.get("diagnosis", {}))
        if self.diagnosis is not None:
            self.diagnosis.load_state_dict(self._diagnosis_state)


class EngineFront:
    """What every front end offers over its :attr:`engine`: the last report, the count of logged
    steps, listeners and the findings."""

    engine: Engine

    @property
    def last_logged(self) -> LoggedScalars | None:
        """The scalars of the most recent logging step (read by ``DiagnosticThresholds``), or
        ``None``."""
        return self.engine.last_logged

    @property
    def n_logged(self) -> int:
        """How many steps have logged, over resumed runs too."""
        return self.engine.n_logged

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(last_logged)`` after every emitted step, once it is written.

        Example:
            >>> from ln_diagnostics.callbacks import LayerDiagnostics
            >>> diag = LayerDiagnostics()
            >>> seen = []
            >>> diag.add_listener(seen.append)
            >>> diag.remove_listener(seen.append)
        """
        self.engine.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        self.engine.remove_listener(listener)

    def diagnose(self) -> list[Finding]:
        """The findings on the statistics logged so far (empty with ``diagnosis=False``)."""
        return self.engine.diagnose()
