"""Every option of a diagnostics run, validated once for all front ends.

``LayerDiagnostics(...)`` and ``attach(model, ...)`` take the same keyword options and hand them to
:meth:`DiagnosticsOptions.create`, so the same bad input gives the same error from both, and the
run summary and the HParams tab list the same names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ln_diagnostics._validate import check_bool, check_optional_int
from ln_diagnostics.collect.options import SelectionOptions
from ln_diagnostics.engine.probes import ProbeOptions
from ln_diagnostics.tensorboard.summary_text import changed_options, constructor_options


@dataclass(frozen=True)
class DiagnosticsOptions:
    """The validated options (their meaning: :class:`~ln_diagnostics.callbacks.LayerDiagnostics`).

    The fields are the constructor options with their defaults, so that the run summary lists
    them all and the HParams tab the ones a run changed.

    Example:
        >>> opts = DiagnosticsOptions.create(every_n_steps=5, include="net.*")
        >>> opts.include, opts.selection.include, sorted(opts.changed())
        (('net.*',), ('net.*',), ['every_n_steps', 'include'])
    """

    every_n_steps: int | None = None
    histogram_every_n_steps: int | None = None
    types: tuple[type, ...] | None = None
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    track_updates: bool = True
    shift_every_n_steps: int | None = None
    ics_every_n_steps: int = 0
    probe_batch: Any = None
    probe_forward: Callable[[Any, Any], Any] | None = None
    ics_layers: tuple[str, ...] | None = None
    ics_loss: Callable[[Any, Any], Any] | None = None
    group_depth: int | None = None
    diagnosis: bool = True
    selection: SelectionOptions = field(init=False, repr=False, compare=False)
    probe: ProbeOptions = field(init=False, repr=False, compare=False)

    @classmethod
    def create(
        cls,
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
    ) -> DiagnosticsOptions:
        """Validate user input; errors name the argument, the expectation and the value."""
        selection = SelectionOptions.create(
            types=types, include=include, exclude=exclude, track_updates=track_updates
        )
        probe = ProbeOptions.create(
            shift_every_n_steps=shift_every_n_steps,
            ics_every_n_steps=ics_every_n_steps,
            probe_batch=probe_batch,
            probe_forward=probe_forward,
            ics_layers=ics_layers,
            ics_loss=ics_loss,
        )
        options = cls(
            every_n_steps=check_optional_int("every_n_steps", every_n_steps, minimum=1),
            histogram_every_n_steps=check_optional_int(
                "histogram_every_n_steps", histogram_every_n_steps, minimum=0
            ),
            types=selection.types,
            include=selection.include,
            exclude=selection.exclude,
            track_updates=selection.track_updates,
            shift_every_n_steps=probe.shift_every_n_steps,
            ics_every_n_steps=probe.ics_every_n_steps,
            probe_batch=probe.probe_batch,
            probe_forward=probe.probe_forward,
            ics_layers=probe.ics_layers,
            ics_loss=probe.ics_loss,
            group_depth=check_optional_int("group_depth", group_depth, minimum=1),
            diagnosis=check_bool("diagnosis", diagnosis),
        )
        object.__setattr__(options, "selection", selection)
        object.__setattr__(options, "probe", probe)
        return options

    def as_dict(self) -> dict[str, Any]:
        """Every option by name, as given (intervals not yet resolved)."""
        return constructor_options(self)

    def changed(self) -> dict[str, Any]:
        """The options given a value other than their default."""
        return changed_options(self, self.as_dict())
