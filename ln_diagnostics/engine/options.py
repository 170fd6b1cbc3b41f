"""Every option of a diagnostics run, validated once for all front ends.

``LayerDiagnostics(...)`` and ``attach(model, ...)`` take the same keyword options and hand them to
:meth:`DiagnosticsOptions.create`, so the same bad input gives the same error from both, and the
run summary and the HParams tab list the same names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
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
    def create(cls, **given: Any) -> DiagnosticsOptions:
        """Validate the options given by name (the others keep their defaults); errors name the
        argument, the expectation and the value."""
        unknown = sorted(set(given) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown options {unknown}; the options are {list(OPTION_NAMES)}")
        opts = {name: given.get(name, _DEFAULTS[name]) for name in OPTION_NAMES}
        selection = SelectionOptions.create(**{name: opts[name] for name in _SELECTION})
        probe = ProbeOptions.create(**{name: opts[name] for name in _PROBE})
        options = cls(
            every_n_steps=check_optional_int("every_n_steps", opts["every_n_steps"], minimum=1),
            histogram_every_n_steps=check_optional_int(
                "histogram_every_n_steps", opts["histogram_every_n_steps"], minimum=0
            ),
            **{name: getattr(selection, name) for name in _SELECTION},
            **{name: getattr(probe, name) for name in _PROBE},
            group_depth=check_optional_int("group_depth", opts["group_depth"], minimum=1),
            diagnosis=check_bool("diagnosis", opts["diagnosis"]),
        )
        object.__setattr__(options, "selection", selection)
        object.__setattr__(options, "probe", probe)
        return options

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> DiagnosticsOptions:
        """The options among a front end's arguments (its ``locals()``), validated."""
        return cls.create(**{name: arguments[name] for name in OPTION_NAMES if name in arguments})

    def as_dict(self) -> dict[str, Any]:
        """Every option by name, as given (intervals not yet resolved)."""
        return constructor_options(self)

    def changed(self) -> dict[str, Any]:
        """The options given a value other than their default."""
        return changed_options(self, self.as_dict())


#: The option names, in the constructors' order.
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(DiagnosticsOptions) if f.init)
_DEFAULTS = {f.name: f.default for f in fields(DiagnosticsOptions) if f.init}
_SELECTION = tuple(f.name for f in fields(SelectionOptions))
_PROBE = tuple(f.name for f in fields(ProbeOptions))
