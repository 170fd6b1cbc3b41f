"""When each kind of work runs: the one place that says whether a step logs."""

from __future__ import annotations

from dataclasses import dataclass

from ln_diagnostics.collect.options import default_interval, histogram_interval

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


#: Logging steps between two heat-map redraws when histograms are off: the pictures take a few
#: hundred milliseconds to draw, so they follow the histograms, else every 100 logging steps
#: (and fit end).
HEATMAP_LOGGING_STEPS = 100


def due(interval: int, step: int) -> bool:
    """Whether work every ``interval`` steps (0 = never) runs at ``step``.

    Example:
        >>> due(5, 10), due(5, 7), due(0, 0)
        (True, False, False)
    """
    return interval > 0 and step % interval == 0


@dataclass(frozen=True)
class Schedule:
    """The intervals of a run, resolved from the options and the front end's logging interval.

    Example:
        >>> s = Schedule.resolve(every_n_steps=50)
        >>> s.scalars, s.histograms, s.shift, s.heatmaps, s.logs(100), s.logs(101)
        (50, 500, 500, 500, True, False)
    """

    scalars: int
    histograms: int
    shift: int
    ics: int
    heatmaps: int

    @classmethod
    def resolve(
        cls,
        *,
        every_n_steps: int,
        histogram_every_n_steps: int | None = None,
        shift_every_n_steps: int | None = None,
        ics_every_n_steps: int = 0,
    ) -> Schedule:
        """Defaults: histograms and the shift probe 10x rarer than the scalars (at least 500 and
        100 steps apart), heat maps with the histograms."""
        histograms = histogram_interval(every_n_steps, histogram_every_n_steps)
        return cls(
            scalars=every_n_steps,
            histograms=histograms,
            shift=shift_interval(every_n_steps, shift_every_n_steps),
            ics=ics_every_n_steps,
            heatmaps=histograms or HEATMAP_LOGGING_STEPS * every_n_steps,
        )

    def logs(self, step: int) -> bool:
        """Whether ``step`` logs scalars."""
        return due(self.scalars, step)

    def histograms_at(self, step: int) -> bool:
        return due(self.histograms, step)

    def heatmaps_at(self, step: int) -> bool:
        return due(self.heatmaps, step)
