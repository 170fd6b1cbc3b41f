"""Validated module-selection options, shared by ``attach()`` and ``LayerDiagnostics``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ln_diagnostics._validate import check_bool, check_globs
from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.selection import (
    no_match_message,
    parameter_owners,
    resolve_types,
    select_modules,
)


def histogram_interval(every_n_steps: int, histogram_every_n_steps: int | None) -> int:
    """The histogram interval: as given, or by default 10x rarer than the scalars."""
    return 10 * every_n_steps if histogram_every_n_steps is None else histogram_every_n_steps


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
            raise ValueError(
                f"types must be None or a non-empty list of nn.Module classes; got {types!r}"
            )
        if include is not None and not isinstance(include, str) and not include:
            raise ValueError(
                "include must be None (every module) or a glob string or a non-empty list of "
                f"glob strings; got {include!r}"
            )
        return cls(
            types=None if types is None else resolve_types(types),
            include=check_globs("include", include),
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
