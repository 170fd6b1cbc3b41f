"""A bounded host-side history of the logged scalars the diagnosis rules read.

Only the tags the rules read are kept (:func:`relevant`), as compact arrays (12 bytes a point).
Values are kept in float32, the precision TensorBoard's event files store scalars in, so the
callback diagnoses exactly the numbers ``ln-diagnostics diagnose`` reads back.
Every logging step whose report holds such a tag is one *entry*; when ``max_entries`` entries are
kept, every other one is dropped and from then on only every 2nd (then 4th, ...) entry is kept, so
a run of any length costs at most ``max_entries`` points per tag and the history always spans the
whole run, first step included. ``ln-diagnostics diagnose`` feeds the event file's points through
the same history, one entry per logged step, so both front ends diagnose the same points.

Example:
    >>> h = History(max_entries=4)
    >>> for step in range(10):
    ...     h.add(step, {"health/grad_norm_total": float(step), "train/loss": 1.0})
    >>> h.series()["health/grad_norm_total"]
    [(0, 0.0), (4, 4.0), (8, 8.0)]
    >>> "train/loss" in h.series()
    False
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ln_diagnostics.tags import (
    ACTIVATIONS,
    BACKPROP,
    GRADIENTS,
    HEALTH,
    SHIFT,
    UPDATES,
    parse_tag,
)

#: (group, stat) pairs the rules read; ``health`` stats are model-wide.
RELEVANT: frozenset[tuple[str, str]] = frozenset(
    {
        (ACTIVATIONS, "std"),
        (ACTIVATIONS, "rms"),
        (ACTIVATIONS, "zero_frac"),
        (ACTIVATIONS, "saturated_frac"),
        (ACTIVATIONS, "nonfinite"),
        (BACKPROP, "norm"),
        (GRADIENTS, "norm"),
        (UPDATES, "ratio"),
        (SHIFT, "mean_step"),
        (HEALTH, "grad_norm_total"),
        (HEALTH, "grad_norm_total_max"),
        (HEALTH, "nonfinite_grads"),
        (HEALTH, "nonfinite_activations"),
        (HEALTH, "update_ratio_total"),
        (HEALTH, "shift_mean_step"),
    }
)

DEFAULT_MAX_ENTRIES = 1024

#: ``(steps, {tag: (positions, values)})``: the kept logging steps (sorted) and, per tag, the
#: positions of its points among them and their values (float64 of the float32 kept).
Columns = tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]


def relevant(tag: str) -> bool:
    """Whether a rule reads ``tag`` (training tags only: ``val/...`` and the like are not)."""
    parsed = parse_tag(tag)
    return (
        parsed is not None
        and tag.startswith(parsed.group + "/")
        and (parsed.group, parsed.stat) in RELEVANT
    )


class History:
    """Points of the relevant tags, at most ``max_entries`` logging steps per tag.

    Args:
        max_entries: logging steps kept; beyond it the history is thinned evenly (see module).
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 2:
            raise ValueError(f"max_entries must be an integer >= 2; got {max_entries!r}")
        self.max_entries = max_entries
        self._clear()

    def _clear(self) -> None:
        self._stride = 1
        self._entries = 0  # entries seen
        self._kept: array[int] = array("q")  # entry indices kept
        self._steps: dict[int, int] = {}  # kept entry index -> step
        self._series: dict[str, tuple[array[int], array[float]]] = {}
        self._relevant: dict[str, bool] = {}

    def __len__(self) -> int:
        """Logging steps currently kept."""
        return len(self._kept)

    def add(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record one logging step's report (irrelevant tags are ignored)."""
        points = [(t, v) for t, v in scalars.items() if self._is_relevant(t)]
        if not points:
            return
        index = self._entries
        self._entries += 1
        if index % self._stride:
            return
        self._kept.append(index)
        self._steps[index] = int(step)
        for name, value in points:
            entry = self._series.get(name)
            if entry is None:
                entry = self._series[name] = (array("q"), array("f"))
            entry[0].append(index)
            entry[1].append(float(value))
        if len(self._kept) >= self.max_entries:
            self._thin()

    def _is_relevant(self, name: str) -> bool:
        known = self._relevant.get(name)
        if known is None:
            known = self._relevant[name] = relevant(name)
        return known

    def _thin(self) -> None:
        self._stride *= 2
        keep = self._stride
        self._kept = array("q", (i for i in self._kept if i % keep == 0))
        self._steps = {i: self._steps[i] for i in self._kept}
        for name, (indices, values) in list(self._series.items()):
            pairs = [(i, v) for i, v in zip(indices, values, strict=True) if i % keep == 0]
            self._series[name] = (
                array("q", (i for i, _ in pairs)),
                array("f", (v for _, v in pairs)),
            )

    def series(self) -> dict[str, list[tuple[int, float]]]:
        """``{tag: [(step, value), ...]}`` in step order, tags in first-seen order."""
        return {
            name: [(self._steps[i], v) for i, v in zip(indices, values, strict=True)]
            for name, (indices, values) in self._series.items()
            if len(indices)
        }

    def columns(self) -> Columns:
        """The kept points as arrays (no tuple per point): see :data:`Columns`."""
        kept = np.frombuffer(self._kept, dtype=np.int64) if len(self._kept) else np.empty(0, int)
        steps = np.array([self._steps[i] for i in self._kept], dtype=np.int64)
        every = np.arange(len(kept))  # the positions of a tag logged at every kept step
        out = {}
        for name, (indices, values) in self._series.items():
            if not len(indices):
                continue
            if len(indices) == len(kept):
                positions = every
            else:
                positions = np.searchsorted(kept, np.frombuffer(indices, dtype=np.int64))
            out[name] = (positions, np.frombuffer(values, dtype=np.float32).astype(np.float64))
        return steps, out

    def tags(self) -> list[str]:
        """The kept tags, in first-seen order."""
        return [name for name, (indices, _) in self._series.items() if len(indices)]

    def state_dict(self) -> dict[str, Any]:
        """The history as plain lists of ints and floats (what ``torch.load(weights_only=True)``
        reads back), no bigger than the history itself: a tag logged at every kept step stores
        its values only."""
        kept = self._kept.tolist()
        return {
            "max_entries": self.max_entries,
            "stride": self._stride,
            "entries": self._entries,
            "kept": kept,
            "steps": [self._steps[i] for i in kept],
            "series": {
                name: (None if len(indices) == len(kept) else indices.tolist(), values.tolist())
                for name, (indices, values) in self._series.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; missing keys leave an empty history.

        Raises:
            ValueError: the state's lists do not fit together (the message says which).
        """
        self._clear()
        if "kept" not in state:
            return
        kept, steps = array("q", state["kept"]), list(state["steps"])
        if len(kept) != len(steps):
            raise ValueError(
                f"History state: {len(kept)} kept entries but {len(steps)} steps; expected one "
                "step per kept entry"
            )
        for name, (indices, values) in state["series"].items():
            pair = (kept if indices is None else array("q", indices), array("f", values))
            if len(pair[0]) != len(pair[1]):
                raise ValueError(
                    f"History state: tag {name!r} has {len(pair[0])} entries but "
                    f"{len(pair[1])} values"
                )
            self._series[name] = (array("q", pair[0]), pair[1])
        self.max_entries = int(state["max_entries"])
        self._stride = int(state["stride"])
        self._entries = int(state["entries"])
        self._kept = kept
        self._steps = dict(zip(kept, steps, strict=True))

    @classmethod
    def from_series(
        cls,
        series: Mapping[str, Iterable[tuple[int, float]]],
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> History:
        """A history fed from logged series, one entry per distinct step (as the callback would).

        Of two points of one tag at the same step (a resumed run that logged a step again), the
        later one wins.
        """
        by_step: dict[int, dict[str, float]] = {}
        for name, points in series.items():
            for step, value in points:
                by_step.setdefault(int(step), {})[name] = value
        history = cls(max_entries)
        for step in sorted(by_step):
            history.add(step, by_step[step])
        return history
