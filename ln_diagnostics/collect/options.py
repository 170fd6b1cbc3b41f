"""Validated module-selection options, shared by ``attach()`` and ``LayerDiagnostics``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ln_diagnostics._validate import argument_error, check_bool, check_globs, describe
from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.selection import (
    no_match_message,
    parameter_owners,
    resolve_types,
    select_modules,
)

#: Fewest steps between two histogram steps by default. A histogram step (activation and
#: gradient histograms, and the heat maps redrawn with them) costs several plain steps on the
#: benchmark models (``benchmarks/overhead.py --breakdown``), so logging scalars every step must
#: not mean histograms every 10 steps.
MIN_HISTOGRAM_INTERVAL = 500


def default_interval(every_n_steps: int, at_least: int) -> int:
    """10x rarer than the scalars, and at least ``at_least`` steps apart, in whole multiples of
    ``every_n_steps`` so that the rarer work falls on logging steps.

    Example:
        >>> default_interval(50, 500), default_interval(1, 500), default_interval(7, 100)
        (500, 500, 105)
    """
    return every_n_steps * max(10, -(-at_least // every_n_steps))


def histogram_interval(every_n_steps: int, histogram_every_n_steps: int | None) -> int:
    """The histogram interval: as given, or by default 10x rarer than the scalars and at least
    :data:`MIN_HISTOGRAM_INTERVAL` steps apart (see :func:`default_interval`)."""
    if histogram_every_n_steps is not None:
        return histogram_every_n_steps
    return default_interval(every_n_steps, MIN_HISTOGRAM_INTERVAL)


@dataclass(frozen=True)
class SelectionOptions:
    """Which modules to watch and what to measure besides the defaults.

    Example:
        >>> from torch import nn
        >>> opts = SelectionOptions.create(types=None, include=["0"], exclude=None)
        >>> opts.build(nn.Sequential(nn.Linear(2, 2), nn.ReLU())).names
        ['0']
    """

    types: tuple[type, ...] | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    track_updates: bool = True

    @classmethod
    def create(
        cls,
        *,
        types: Sequence[type | str] | None,
        include: str | Sequence[str] | None,
        exclude: str | Sequence[str] | None,
        track_updates: bool = True,
    ) -> SelectionOptions:
        """Validate user input; errors name the argument, the expectation and the value."""
        if isinstance(types, (str, type)):
            types = [types]
        if types is not None and (not isinstance(types, Sequence) or not types):
            raise argument_error(
                "types", "None or a non-empty list of nn.Module classes", describe(types)
            )
        return cls(
            types=None if types is None else resolve_types(types),
            include=check_globs("include", include, allow_empty=False),
            exclude=check_globs("exclude", exclude),
            track_updates=check_bool("track_updates", track_updates),
        )

    def build(self, model: nn.Module, *, tag_prefix: str = "") -> Collector:
        """A collector for ``model``.

        Raises:
            ValueError: no module matched; the message lists a few candidate names.
        """
        modules = select_modules(
            model, types=self.types, include=self.include, exclude=self.exclude
        )
        if not modules:
            raise ValueError(
                no_match_message(
                    model, types=self.types, include=self.include, exclude=self.exclude
                )
            )
        owners = []
        if self.types is None:  # the default rule leaves no trainable parameter unreported
            owners = parameter_owners(model, modules, include=self.include, exclude=self.exclude)
        return Collector(
            model,
            modules,
            owners=owners,
            track_updates=self.track_updates,
            tag_prefix=tag_prefix,
        )
