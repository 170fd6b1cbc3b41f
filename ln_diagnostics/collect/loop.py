"""``Diagnostics``: drives a :class:`Collector` from a hand-written training loop."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.records import LoggedScalars, StepReport

Sink = Callable[[StepReport], None]


class Diagnostics:
    """The handle returned by ``ln_diagnostics.attach``; a context manager that detaches on exit.

    Call ``before_optimizer_step()`` after ``backward()`` (and after unscaling, before clipping)
    and ``step()`` after ``optimizer.step()``. Step 0 and every ``every_n_steps``-th step log.

    Attributes:
        last_logged: the scalars of the most recent logging step, or ``None``.
    """

    def __init__(
        self,
        collector: Collector,
        *,
        sink: Sink | None,
        every_n_steps: int,
        histogram_every_n_steps: int,
        flush: Callable[[], None] | None = None,
    ) -> None:
        self.collector = collector
        self._sink = sink
        self._flush = flush
        self.every_n_steps = every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        self.last_logged: LoggedScalars | None = None
        self.global_step = 0
        collector.attach()
        self._begin()

    def _begin(self) -> None:
        step = self.global_step
        hist = self.histogram_every_n_steps
        self.collector.begin_step(
            step,
            scalars=step % self.every_n_steps == 0,
            histograms=hist > 0 and step % hist == 0,
        )

    def before_optimizer_step(self) -> None:
        """Read gradients for this step (only does work on logging steps)."""
        self.collector.before_optimizer_step()

    def step(self) -> StepReport | None:
        """Close the current step (after ``optimizer.step()``) and open the next one."""
        report = self.collector.end_step()
        if report is not None:
            self.last_logged = LoggedScalars(report.step, report.scalars)
            if self._sink is not None:
                self._sink(report)
        self.global_step += 1
        self._begin()
        return report

    def detach(self) -> None:
        """Remove every hook from the model and flush the writer."""
        self.collector.detach()
        if self._flush is not None:
            self._flush()

    def __enter__(self) -> Diagnostics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()
